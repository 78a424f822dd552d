"""LeRobot checkpoints in vla's envs: ``vla eval eval.checkpoint=<a LeRobot pretrained_model>``.

A checkpoint written by LeRobot (``lerobot-train``'s ``pretrained_model/``, or any hub id of
one) holds ``config.json`` with a ``type`` (act, diffusion, ...), ``model.safetensors`` and its
processor pipelines (``policy_preprocessor.json`` / ``policy_postprocessor.json`` with their
normalization state). `LeRobotRuntime` runs it with LeRobot's own pieces, exactly as
``lerobot-eval`` does,

    env observation -> images (B, 3, H, W) float in [0, 1], state, task -> preprocessor
    -> policy.select_action -> postprocessor -> action (B, D_a)

and speaks the runtime interface vla's rollout drives (``act``, ``reset``, ``annotations``),
so a LeRobot policy gets vla's seeds, vectorized envs, videos and report unchanged.

LeRobot policies keep their action queue / observation history batched inside the policy
object and reset it for the whole batch at once, while vla's rollout resets each env when its
episode ends. Each env therefore gets its own deep copy of the policy (weights included: a
policy's state objects are not separable from it in general) and is stepped as a batch of one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from vla.checkpoint import is_lerobot_checkpoint, resolve_model_dir
from vla.errors import CheckpointError
from vla.features import OBS_IMAGES, OBS_STATE, TASK
from vla.seeding import sampling_seed, seeded

PREPROCESSOR_FILE = "policy_preprocessor.json"


def load_lerobot_policy(model_dir: Path, device: str | torch.device = "cpu"):
    """(policy, preprocessor, postprocessor) from a LeRobot ``pretrained_model`` directory."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    model_dir = Path(model_dir)
    if not (model_dir / PREPROCESSOR_FILE).exists():
        raise CheckpointError(f"{model_dir}: a LeRobot checkpoint without {PREPROCESSOR_FILE}; "
                              f"it was saved by a LeRobot older than 0.4 (no processor pipelines), "
                              f"which vla cannot normalize for")
    try:
        cfg = PreTrainedConfig.from_pretrained(model_dir)
        cfg.device = str(device)
        policy = get_policy_class(cfg.type).from_pretrained(model_dir, config=cfg)
        pre, post = make_pre_post_processors(
            cfg, pretrained_path=str(model_dir),
            preprocessor_overrides={"device_processor": {"device": str(device)}})
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{model_dir}: cannot load this LeRobot checkpoint ({first})") from None
    return policy.to(device).eval(), pre, post


class LeRobotRuntime:
    """A LeRobot policy acting in B vla envs: ``act(obs) -> (B, D_a)`` actions, raw units."""

    def __init__(self, policy, preprocessor, postprocessor):
        from lerobot.configs.types import FeatureType

        self.policy, self.pre, self.post = policy, preprocessor, postprocessor
        cfg = policy.config
        self.name = cfg.type
        self.n_action_steps = getattr(cfg, "n_action_steps", 1)
        self.device = next(policy.parameters()).device
        # The keys the policy reads, and the (C, H, W) each image must have.
        self.image_shapes = {k: tuple(f.shape) for k, f in cfg.input_features.items() if f.type is FeatureType.VISUAL}
        self.low_dim = {k: tuple(f.shape) for k, f in cfg.input_features.items() if f.type is not FeatureType.VISUAL}
        self._copies: list = []
        self._seeds: dict[int, int | None] = {}  # env -> its episode's seed (reproducible sampling)
        self._steps: dict[int, int] = {}

    def reset(self, env_ids: list[int] | None = None, seeds: list[int] | None = None) -> None:
        """Forget history and queued actions (of some environments, or all); ``seeds``: each
        reset env's episode seed, from which its noise is drawn with its step (vla/seeding.py)."""
        ids = list(range(len(self._copies) if seeds is None else len(seeds))) if env_ids is None else env_ids
        for k, i in enumerate(ids):
            if i < len(self._copies):
                self._copies[i].reset()
            self._seeds[i], self._steps[i] = (None if seeds is None else seeds[k]), 0

    def annotations(self) -> None:
        return None

    def protocol(self) -> dict:
        """What the eval report pins about this policy."""
        cfg = self.policy.config
        out = {"policy": f"lerobot/{self.name}", "n_obs_steps": getattr(cfg, "n_obs_steps", 1),
               "chunk": getattr(cfg, "chunk_size", None) or getattr(cfg, "horizon", None)}
        for key in ("noise_scheduler_type", "num_inference_steps", "temporal_ensemble_coeff"):
            if getattr(cfg, key, None) is not None:
                out[key] = getattr(cfg, key)
        return out

    def _batch(self, obs: dict, i: int) -> dict:
        """Env ``i``'s observation as LeRobot's env pipeline hands it to a policy: a batch of one."""
        batch: dict = {}
        for key, (c, h, w) in self.image_shapes.items():
            if key not in obs:
                raise ValueError(f"the LeRobot policy reads {key!r}, which this env does not produce "
                                 f"(it has {sorted(k for k in obs if k.startswith(OBS_IMAGES))})")
            img = np.asarray(obs[key][i])
            if img.shape != (h, w, c):
                raise ValueError(f"{key}: the LeRobot policy was trained on ({h}, {w}, {c}) images, the env gives "
                                 f"{img.shape}; set env.image_size to match")
            batch[key] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div_(255.0)
        for key, shape in self.low_dim.items():
            if key not in obs:
                raise ValueError(f"the LeRobot policy reads {key!r}, which this env does not produce")
            x = torch.as_tensor(np.asarray(obs[key][i]), dtype=torch.float32)[None]
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"{key}: the LeRobot policy expects shape {shape}, the env gives {tuple(x.shape[1:])}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{key}: non-finite values in the observation")
            batch[key] = x
        batch[TASK] = [str(obs[TASK][i])]
        return batch

    @torch.no_grad()
    def act(self, obs: dict) -> np.ndarray:
        """Batched numpy observation (keys of vla.features, leading B) -> actions (B, D_a)."""
        b = len(obs[OBS_STATE]) if OBS_STATE in obs else len(obs[TASK])
        while len(self._copies) < b:  # one policy object per env: each keeps its own queues
            clone = copy.deepcopy(self.policy) if self._copies else self.policy
            clone.reset()
            self._copies.append(clone)
        actions = []
        for i in range(b):
            seed, step = self._seeds.get(i), self._steps.get(i, 0)
            with seeded(sampling_seed([seed], [step]), self.device):
                action = self._copies[i].select_action(self.pre(self._batch(obs, i)))
            actions.append(self.post(action).float().cpu().numpy().reshape(-1))
            self._steps[i] = step + 1
        return np.stack(actions)


def load_lerobot_runtime(path_or_id: str, device: str | torch.device = "cpu") -> LeRobotRuntime:
    """A `LeRobotRuntime` for a LeRobot checkpoint directory or hub id."""
    model_dir = resolve_model_dir(path_or_id)
    if not is_lerobot_checkpoint(model_dir):
        raise CheckpointError(f"{path_or_id}: not a LeRobot checkpoint (its config.json names no policy type)")
    return LeRobotRuntime(*load_lerobot_policy(model_dir, device))
