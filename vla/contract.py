"""The two dicts a policy reads, typed, and their shapes checked where they enter a policy.

`Batch` (training, normalized) and `Observation` (acting, normalized) are the dicts of the
policy contract in :mod:`vla.policy` (whose docstring gives every shape). Camera keys are named
by the camera (``observation.images.<camera>``), which a TypedDict cannot list, so those are
checked by `check_batch` rather than typed. The trainer checks every batch and the runtime every
observation before a policy sees them: a wrong shape is one line naming the key, the shape found
and the one the policy's config expects, instead of an error deep inside a model.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor

from vla.features import ACTION, ACTION_DIM_PAD, ACTION_PREFIX, CAMERA_PAD, EMBODIMENT, OBS_STATE, TASK

# The functional form, because the LeRobot feature names have dots in them.
Observation = TypedDict("Observation", {
    OBS_STATE: Tensor,             # (B, T_o, D_s)
    "frames": dict[str, Tensor],   # Backbone.encode_frames features, (B, T_o, ...) each (cached path)
    "text": dict[str, Tensor],     # Backbone.encode_text features, (B, ...) each (cached path)
    TASK: list[str],               # B instructions (raw path)
    "step": Tensor,                # (B,) long: control steps since each env's episode began (acting only)
    EMBODIMENT: Tensor,            # (B,) long: each sample's mixture entry (policies trained on a mixture)
    CAMERA_PAD: Tensor,            # (B, n_cam) bool: cameras a dataset lacks (zero images, masked tokens)
}, total=False)

Batch = TypedDict("Batch", {
    **Observation.__annotations__,
    ACTION: Tensor,                # (B, H, D_a)
    f"{ACTION}_is_pad": Tensor,    # (B, H) bool: True past the episode end, no loss there
    ACTION_DIM_PAD: Tensor,        # (B, D_a) bool: a mixture entry's padded action dimensions, no loss there
}, total=False)


def _expect(inputs: dict, key: str, shape: tuple) -> None:
    if key not in inputs:
        raise ValueError(f"{key} is missing")
    found = tuple(inputs[key].shape)
    if len(found) != len(shape) or any(s is not None and f != s for f, s in zip(found, shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{key} has shape {found}; the policy's config expects {want}")


def check_batch(batch: dict, config) -> None:
    """Raise ValueError naming the first key of a training Batch whose shape disagrees with
    ``config`` (a PolicyConfig): each key's time axis as its ``frame_offsets()`` reads it, state
    and action widths, the padding mask, camera frames (B, T, 3, H, W) on the raw path."""
    b = batch[OBS_STATE].shape[0] if OBS_STATE in batch else None
    offsets = config.frame_offsets()
    _expect(batch, OBS_STATE, (b, len(offsets[OBS_STATE]), config.state_dim))
    if ACTION in offsets:
        _expect(batch, ACTION, (b, len(offsets[ACTION]), config.action_dim))
        _expect(batch, f"{ACTION}_is_pad", (b, len(offsets[ACTION])))
    if config.embodiments:  # a mixture: every sample says its entry, and which action dims are padding
        _expect(batch, EMBODIMENT, (b,))
        if ACTION in offsets:
            _expect(batch, ACTION_DIM_PAD, (b, config.action_dim))
    if "frames" not in batch:  # the raw path: the policy encodes the cameras itself
        for key in config.image_keys():
            _expect(batch, key, (b, len(offsets[key]), 3, None, None))
        if len(batch.get(TASK, ())) != b:
            raise ValueError(f"{TASK}: {len(batch.get(TASK, ()))} instructions for a batch of {b}")


def check_observation(obs: dict, config) -> None:
    """Raise ValueError unless an Observation's state is (B, T, D_s) and its step (B,)."""
    _expect(obs, OBS_STATE, (None, None, config.state_dim))
    if len(config.embodiments) > 1:
        _expect(obs, EMBODIMENT, (obs[OBS_STATE].shape[0],))
    if obs.get("step") is not None:
        _expect(obs, "step", (obs[OBS_STATE].shape[0],))
    guide = obs.get(ACTION_PREFIX)
    if guide is not None:
        b = obs[OBS_STATE].shape[0]
        if tuple(guide.actions.shape) != (b, config.horizon, config.action_dim) or \
                tuple(guide.weights.shape) != (b, config.horizon):
            raise ValueError(f"{ACTION_PREFIX}: expected actions {(b, config.horizon, config.action_dim)} and "
                             f"weights {(b, config.horizon)}, got {tuple(guide.actions.shape)} and "
                             f"{tuple(guide.weights.shape)}")
