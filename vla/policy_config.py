"""What a policy is configured by, and the registry of policies by name: torch-free.

A config composes (Hydra, vla/config.py) on a machine that runs no model, e.g. the robot side of
a deployment served from another machine; the policy classes (vla/policy.py, torch) load only
when a policy is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from vla.backbone.config import BackboneConfig
from vla.features import ACTION, OBS_ENV_STATE, OBS_STATE, image_key
from vla.heads.config import NoiseProcessConfig


@dataclass
class PolicyConfig:
    """Fields every policy has. Policy configs subclass this (one dataclass per policy)."""

    name: str = ""
    n_obs_steps: int = 2         # T_o: observed frames per decision
    horizon: int = 16            # H: actions predicted per chunk
    n_action_steps: int = 8      # T_a: actions executed before re-planning (<= horizon)
    state_dim: int = 0           # D_s; 0 = read from the dataset at training time
    action_dim: int = 0          # D_a; 0 = read from the dataset at training time
    # the entries of a dataset mixture (vla/data/mixture.py), by name: each gets a learned token in the
    # prefix; state_dim / action_dim are then the largest of theirs. Empty: one dataset, no token.
    embodiments: list[str] = field(default_factory=list)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    noise: NoiseProcessConfig = field(default_factory=NoiseProcessConfig)
    # per-feature normalization mode: mean_std | min_max | quantile | identity
    normalization: dict[str, str] = field(
        default_factory=lambda: {OBS_STATE: "mean_std", ACTION: "min_max"}
    )
    # Auxiliary target, training only: predict the newest frame's observation.environment_state
    # (object poses that a simulated dataset records) from the prefix tokens, and add this
    # weight times its MSE to the loss, to teach the visual tokens where the objects are. (On
    # the lift demo it did not raise success: 22% vs 30%, see the README.) The policy never
    # reads the feature, so it still deploys where nothing measures object poses. 0 = off.
    env_state_weight: float = 0.0
    env_state_dim: int = 0       # D_e; 0 = read from the dataset at training time
    # Training-time real-time chunking (vla/heads/committed.py): each sample's first d actions, d
    # uniform in [0, rtc_train_max_delay], go in clean as committed and carry no loss, so the
    # policy learns to continue a plan the arm is executing while it computes. Deploy with
    # deploy.rtc=true deploy.rtc_method=condition. Set it to the worst inference delay in control
    # steps (200 ms at 20 Hz = 4). 0 = off; policies with supports_committed_actions only.
    rtc_train_max_delay: int = 0

    def validate(self) -> None:
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [1, horizon={self.horizon}]")
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if self.env_state_weight < 0:
            raise ValueError(f"env_state_weight must be >= 0, got {self.env_state_weight}")
        if not 0 <= self.rtc_train_max_delay < self.horizon:
            raise ValueError(f"rtc_train_max_delay={self.rtc_train_max_delay} must be in [0, horizon={self.horizon})")

    def image_keys(self) -> list[str]:
        return [image_key(c) for c in self.backbone.cameras]

    def frame_offsets(self) -> dict[str, list[int]]:
        """Frame offsets each dataset key is read at, relative to the current frame.

        Observations: the history -(T_o - 1) .. 0. Actions: 0 .. H - 1, so action 0 is the
        one taken at the newest observed frame. A policy that needs more (e.g. a future
        frame at +H as a world-model target) extends this dict; the data pipeline reads it.
        """
        obs = list(range(1 - self.n_obs_steps, 1))
        offsets = {key: obs for key in self.image_keys()}
        offsets[OBS_STATE] = obs
        if self.needs_actions():
            offsets[ACTION] = list(range(self.horizon))
        if self.env_state_weight > 0:
            offsets[OBS_ENV_STATE] = [0]  # the auxiliary target: the newest frame's object poses
        return offsets

    def future_offsets(self) -> list[int]:
        """Offsets of future frames whose frozen features are training targets (a world
        model's); the batch then carries them as ``future_frames`` / ``future_images`` with
        ``future_is_pad`` (B, F). None by default."""
        return []

    def needs_actions(self) -> bool:
        """False for a mode that trains without the action feature (video-only pretraining)."""
        return True

    def optional_features(self) -> set[str]:
        """String features of ``frame_offsets`` a dataset may lack (annotations that datasets
        recorded elsewhere do not have): a sample then reads "" for each. None by default."""
        return set()


# name -> "module:ConfigClass", "module:PolicyClass"; imported only when asked for. Each package
# under policies/ registers itself in its __init__ (which imports no model code), so adding a
# policy touches only its own folder (and its configs/policy/*.yaml).
_REGISTRY: dict[str, tuple[str, str]] = {}
_discovered = False


def register_policy(name: str, config_path: str, policy_path: str) -> None:
    """Register a policy by name; paths are ``"module:Class"`` strings, resolved lazily. Packages
    outside ``policies/`` call this too (before composing a config that names them)."""
    _REGISTRY[name] = (config_path, policy_path)


def _discover() -> None:
    """Import every package under ``policies/`` once; each registers itself."""
    global _discovered
    if _discovered:
        return
    import pkgutil

    import policies

    for module in pkgutil.iter_modules(policies.__path__):
        if module.ispkg:
            importlib.import_module(f"policies.{module.name}")
    _discovered = True


def available_policies() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def _resolve(path: str):
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str) -> tuple[str, str]:
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def policy_config_class(name: str) -> type[PolicyConfig]:
    return _resolve(_entry(name)[0])
