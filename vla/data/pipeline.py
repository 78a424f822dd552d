"""A LeRobot dataset -> an endless stream of training batches for one policy config.

Two paths, same batch layout (see :mod:`vla.policy`):
- **cached** (frozen backbone, the default): frame and text features are computed once
  (:mod:`vla.data.cache`) and batches are gathered from memory (:mod:`vla.data.chunks`);
  no video is decoded during training.
- **raw** (trainable backbone): LeRobot's own delta-timestamp loading in a DataLoader,
  images decoded every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch

from vla.config import DatasetConfig
from vla.data.chunks import StringLookup
from vla.data.mapping import FeatureMap
from vla.data.normalize import Normalizer
from vla.data.source import check_features, check_finite, delta_timestamps, open_dataset
from vla.errors import DatasetError, FeatureMismatchError
from vla.features import ACTION, CAMERA_PAD, OBS_ENV_STATE, OBS_STATE, image_key, is_image_key
from vla.policy import PolicyConfig


def infer_dims(policy_cfg: PolicyConfig, features: dict) -> PolicyConfig:
    """Fill ``state_dim`` / ``action_dim`` (and ``env_state_dim`` when the auxiliary target is
    on) left at 0 from the dataset's feature shapes. The target gets min-max normalization
    unless the config names a mode for it: a resting object's height has a std of ~1e-6 m, so
    the one episode where it is bumped would be normalized to thousands under mean-std."""
    cfg = copy.deepcopy(policy_cfg)
    dims = [("state_dim", OBS_STATE), ("action_dim", ACTION)]
    if not cfg.needs_actions() and cfg.action_dim <= 0 and ACTION not in features:
        raise DatasetError("training without actions needs policy.action_dim set (the action size of the data "
                           "you will fine-tune on), since this dataset has no 'action' feature")
    if cfg.env_state_weight > 0:
        dims.append(("env_state_dim", OBS_ENV_STATE))
        cfg.normalization.setdefault(OBS_ENV_STATE, "min_max")
    for attr, key in dims:
        if getattr(cfg, attr) <= 0 and key in features:
            setattr(cfg, attr, int(features[key]["shape"][0]))
    return cfg


def required_features(cfg: PolicyConfig) -> dict[str, tuple | None]:
    # every key the policy reads (e.g. a phase annotation), with the shape of those it sizes
    req: dict[str, tuple | None] = {k: None for k in cfg.frame_offsets()}
    req[OBS_STATE] = (cfg.state_dim,)
    if cfg.needs_actions():
        req[ACTION] = (cfg.action_dim,)
    if cfg.env_state_weight > 0:
        req[OBS_ENV_STATE] = (cfg.env_state_dim,)
    return req


def open_configured(ds_cfg: DatasetConfig, delta_timestamps: dict | None = None):
    """The dataset a DatasetConfig names: a local ``root`` if it exists, else ``repo_id`` from the hub."""
    from pathlib import Path

    kwargs = dict(episodes=ds_cfg.episodes, video_backend=ds_cfg.video_backend, delta_timestamps=delta_timestamps)
    if ds_cfg.root is not None and Path(ds_cfg.root).exists():
        return open_dataset(ds_cfg.root, **kwargs)
    if ds_cfg.repo_id.startswith("local/"):
        raise DatasetError(f"no dataset at {ds_cfg.root} (and {ds_cfg.repo_id!r} is a local name, not a hub id)")
    return open_dataset(ds_cfg.repo_id, root=ds_cfg.root, **kwargs)


def split_future(batch: dict, image_keys: list[str], n_future: int) -> dict:
    """Move the last ``n_future`` frames of every camera (read at ``future_offsets``) into
    ``future_images`` {camera: (B, F, 3, H, W)} and ``future_is_pad`` (B, F)."""
    future = {}
    for key in image_keys:
        frames = batch[key]
        batch[key], future[key.removeprefix("observation.images.")] = frames[:, :-n_future], frames[:, -n_future:]
        pad = batch.get(f"{key}_is_pad")
        if pad is not None:
            batch[f"{key}_is_pad"], batch["future_is_pad"] = pad[:, :-n_future], pad[:, -n_future:]
    batch["future_images"] = future
    return batch


class TrainingData:
    """Training batches of one dataset for one policy config; the trainer normalizes them."""

    normalized = False

    def __init__(self, ds_cfg: DatasetConfig, policy_cfg: PolicyConfig, *, seed: int, device: torch.device,
                 num_workers: int, batch_size: int, is_main: bool = True,
                 barrier: Callable[[], None] = lambda: None, progress: bool = True):
        self.batch_size = batch_size
        meta_ds = open_configured(ds_cfg)
        # the dataset's keys as the policy's features (dataset.features; identity when unset)
        self.feature_map = FeatureMap.from_config(ds_cfg.features)
        features = self.feature_map.features(meta_ds.meta.features)
        self.policy_cfg = infer_dims(policy_cfg, features)
        absent = self.feature_map.absent
        cameras = self.policy_cfg.image_keys()
        if cameras and all(k in absent for k in cameras):
            raise FeatureMismatchError("dataset.features.cameras: every camera the policy reads is null; "
                                       "a dataset needs at least one of them")
        # annotations a dataset recorded elsewhere lacks: every sample reads "" for them
        self.blank = {k: v for k, v in self.policy_cfg.frame_offsets().items()
                      if k in self.policy_cfg.optional_features() and k not in features}
        check_features(features, {k: v for k, v in required_features(self.policy_cfg).items()
                                  if k not in absent and k not in self.blank})
        # cameras the dataset lacks: their images are zeros and their tokens masked (CAMERA_PAD)
        self.camera_pad = torch.tensor([k in absent for k in cameras]) if absent & set(cameras) else None
        self.string_keys = [k for k in self.policy_cfg.frame_offsets() if features.get(k, {}).get("dtype") == "string"]
        # Only features the dataset has (required ones were checked above): a video-only
        # dataset has no action statistics, and its checkpoint gets them when fine-tuned.
        modes = {k: m for k, m in self.policy_cfg.normalization.items() if k in features}
        # before any statistics, cache or step is computed from them
        check_finite(meta_ds, self.feature_map.source_keys(list(modes)))
        self.normalizer = Normalizer(self.feature_map.stats(meta_ds.meta.stats), modes)
        frozen = self.policy_cfg.backbone.freeze_vision and self.policy_cfg.backbone.freeze_text
        self.cached = ds_cfg.cache_features and frozen
        offsets = {k: v for k, v in self.policy_cfg.frame_offsets().items() if k not in self.blank}
        self.future = self.policy_cfg.future_offsets()
        if self.cached:
            self._sampler = self._cached_sampler(meta_ds, offsets, seed, device, is_main, barrier, progress)
            self._iter = None
        else:
            # Future frames ride along as extra image offsets and are split off each batch;
            # string features are looked up by frame index (delta timestamps stack tensors only).
            strings = {k: v for k, v in offsets.items() if k in self.string_keys}
            read = {k: v + self.future if is_image_key(k) else v for k, v in offsets.items() if k not in strings}
            read = self.feature_map.source_offsets(read)
            self.dataset = open_configured(ds_cfg, delta_timestamps(read, meta_ds.meta.fps))
            self._sampler = None
            self._strings = StringLookup(self.dataset, strings) if strings else None
            self._keep = set(offsets) | {"task", "index", f"{ACTION}_is_pad", f"{OBS_STATE}_is_pad"}
            self._keep |= {f"{k}_is_pad" for k in self.string_keys}
            self._seed, self._num_workers, self._iter = seed, num_workers, None  # the loader starts on first use
        self.num_frames = meta_ds.num_frames

    def _cached_sampler(self, dataset, offsets, seed, device, is_main, barrier, progress):
        from vla.backbone import make_backbone
        from vla.data.cache import build_feature_cache
        from vla.data.chunks import ChunkSampler

        cfg = self.policy_cfg
        backbone = make_backbone(cfg.backbone, width=8, n_obs_steps=cfg.n_obs_steps, state_dim=cfg.state_dim)
        backbone.to(device).eval()
        cameras = {c: next((s.key for s in self.feature_map.sources_of(image_key(c))), None)
                   for c in cfg.backbone.cameras}
        if is_main:  # one process encodes, the others wait and read the file
            build_feature_cache(dataset, backbone, progress=progress, camera_keys=cameras)
        barrier()
        features = build_feature_cache(dataset, backbone, progress=False, camera_keys=cameras)
        del backbone
        return ChunkSampler(dataset, offsets, features, seed=seed, future_offsets=self.future,
                            feature_map=self.feature_map)

    def _raw_batches(self) -> Iterator[dict]:
        g = torch.Generator().manual_seed(self._seed)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True,
            num_workers=self._num_workers, persistent_workers=self._num_workers > 0,
        )
        while True:
            for batch in loader:
                yield self.finish_raw(batch)

    def finish_raw(self, batch: dict) -> dict:
        """A batch as lerobot's loader collates it (the dataset's keys) -> the policy's batch:
        mapped features, future frames split off, string features looked up, the rest dropped."""
        batch = self.feature_map.apply(batch)
        if self.camera_pad is not None:  # zero frames shaped like a real camera's (the backbone stacks them)
            real = next(batch[k] for k, pad in zip(self.policy_cfg.image_keys(), self.camera_pad) if not pad)
            for key, pad in zip(self.policy_cfg.image_keys(), self.camera_pad):
                if pad:
                    batch[key] = torch.zeros_like(real)
        if self.future:
            batch = split_future(batch, self.policy_cfg.image_keys(), len(self.future))
        if self._strings is not None:
            batch.update(self._strings(batch["index"]))
        return {k: v for k, v in batch.items()
                if k in self._keep or k.startswith("future_") or (is_image_key(k) and not k.endswith("_is_pad"))}

    def next_batch(self, size: int | None = None) -> dict:
        """The next training batch (not normalized), of ``size`` samples (the cached path) or
        ``batch_size``."""
        if self._sampler is not None:
            return self.with_blanks(self.with_camera_pad(self._sampler.sample(size or self.batch_size)))
        if size not in (None, self.batch_size):
            raise ValueError("the raw path's DataLoader yields batches of batch_size only")
        if self._iter is None:
            self._iter = self._raw_batches()
        return self.with_blanks(self.with_camera_pad(next(self._iter)))

    def with_blanks(self, batch: dict) -> dict:
        """``batch`` with "" (and no padding) for each optional annotation this dataset lacks."""
        b = len(batch[OBS_STATE])
        for key, offsets in self.blank.items():
            batch[key] = [[""] * len(offsets) for _ in range(b)]
            batch[f"{key}_is_pad"] = torch.zeros(b, len(offsets), dtype=torch.bool)
        return batch

    def with_camera_pad(self, batch: dict, always: bool = False) -> dict:
        """``batch`` with ``camera_is_pad`` (B, n_cam) when this dataset lacks a camera (or
        ``always``: a mixture's parts must agree on their keys)."""
        if self.camera_pad is not None or always:
            pad = self.camera_pad if self.camera_pad is not None else torch.zeros(len(self.policy_cfg.image_keys()),
                                                                                    dtype=torch.bool)
            b = len(batch[OBS_STATE])
            batch[CAMERA_PAD] = pad.expand(b, -1).clone()
        return batch

    def state_dict(self) -> dict:
        return {"generator": self._sampler.generator.get_state()} if self._sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self._sampler is not None and "generator" in state:
            self._sampler.generator.set_state(state["generator"])
