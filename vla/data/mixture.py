"""A weighted mixture of LeRobot datasets as one stream of training batches.

    dataset:
      mixture:
        - {name: panda_lift, root: data/lift}
        - {name: sawyer_reach, root: data/reach, weight: 2,
           features: {cameras: {agentview: observation.image}}}
      temperature: 1.0

The entries may differ in camera names, state and action dimensions, fps and language. Each is
read as a single dataset is (`vla.data.pipeline.TrainingData`: its own feature mapping,
statistics and feature cache); a mixture batch then

- draws each sample's entry with probability p_i proportional to
  ``weight_i * frames_i ** (1 / temperature)``: temperature 1 samples frames uniformly
  (weights scale an entry's share), a large one evens out entries of very different sizes;
- normalizes each entry's part with that entry's own statistics (they travel in the
  checkpoint under the entry's name);
- zero-pads state and action to the largest dimensions of the mixture. ``action_dim_is_pad``
  (B, D_a) marks the padded action dimensions, which carry no loss; a padded state dimension
  is 0, which the backbone's linear state projection cannot distinguish from absent;
- says where each sample came from in ``embodiment`` (B,) long: the index of its entry, which
  selects the policy's embodiment token;
- marks the cameras an entry lacks (``features: {cameras: {wrist: null}}``) in
  ``camera_is_pad`` (B, n_cam): zero images whose tokens the backbone masks.

Batches come out normalized (`normalized` is True), unlike a single dataset's, which the
trainer normalizes on the device. On the cached path every entry's rows sit in one store,
normalized and padded once when the run starts, so a mixture batch is a single gather and the
mixture costs the loader little next to one dataset (`benchmarks/data_loading.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vla.config import DatasetConfig, MixtureEntry
from vla.data.normalize import EmbodimentNormalizers, normalize_batch, pad_last
from vla.errors import ConfigError, FeatureMismatchError
from vla.features import ACTION, ACTION_DIM_PAD, CAMERA_PAD, EMBODIMENT, OBS_STATE, is_image_key
from vla.policy import PolicyConfig

if TYPE_CHECKING:
    from vla.data.chunks import ChunkSampler


def check_entries(entries: list[MixtureEntry], temperature: float) -> None:
    """One line naming the entry for a mixture that cannot be read: no name, a name used twice,
    a weight <= 0, or a temperature <= 0."""
    if not temperature > 0:
        raise ConfigError(f"dataset.temperature must be > 0, got {temperature}")
    seen = set()
    for i, e in enumerate(entries):
        where = f"dataset.mixture[{i}]"
        if not e.name or not isinstance(e.name, str):
            raise ConfigError(f"{where}: every entry needs a name (its embodiment)")
        if e.name in seen:
            raise ConfigError(f"{where}: two entries are named {e.name!r}; each entry is one embodiment")
        seen.add(e.name)
        if not (isinstance(e.weight, (int, float)) and e.weight > 0):
            raise ConfigError(f"{where} ({e.name}): weight must be > 0, got {e.weight}")


def mixture_probabilities(frames: list[int], weights: list[float], temperature: float) -> np.ndarray:
    """p_i proportional to weight_i * frames_i ** (1 / temperature)."""
    raw = np.asarray(weights, float) * np.asarray(frames, float) ** (1.0 / temperature)
    return raw / raw.sum()


def entry_dataset_config(ds_cfg: DatasetConfig, entry: MixtureEntry) -> DatasetConfig:
    """The single-dataset config of one entry (cache and video settings shared)."""
    return DatasetConfig(repo_id=entry.repo_id or f"local/{entry.name}", root=entry.root, episodes=entry.episodes,
                         cache_features=ds_cfg.cache_features, video_backend=ds_cfg.video_backend,
                         features=entry.features)


def resize_images(batch: dict, size: int) -> dict:
    """Camera frames (..., 3, H, W) -> (..., 3, size, size), so that entries recorded at
    different sizes share a batch. ``size`` is the backbone's image_size: the embedded
    backbone sees exactly these; a VLM whose tower has another size resizes them again."""
    def resized(frames: Tensor) -> Tensor:
        if frames.shape[-2:] == (size, size):
            return frames
        x = torch.nn.functional.interpolate(frames.flatten(0, -4).float(), size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
        return x.reshape(*frames.shape[:-2], size, size)

    out = {k: resized(v) if is_image_key(k) and torch.is_tensor(v) and v.ndim >= 4 else v for k, v in batch.items()}
    if batch.get("future_images"):
        out["future_images"] = {c: resized(v) for c, v in batch["future_images"].items()}
    return out


def concat_batches(parts: list[dict]) -> dict:
    """Concatenate batches along the batch axis: tensors, lists (strings) and nested dicts."""
    out = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, dict):
            out[key] = concat_batches(values)
        elif torch.is_tensor(first):
            out[key] = torch.cat(values)
        else:
            out[key] = [x for v in values for x in v]
    return out


class MixtureData:
    """Training batches from ``ds_cfg.mixture`` for one policy config (see the module docstring)."""

    normalized = True

    def __init__(self, ds_cfg: DatasetConfig, policy_cfg: PolicyConfig, *, seed: int, device: torch.device,
                 num_workers: int, batch_size: int, is_main: bool = True,
                 barrier: Callable[[], None] = lambda: None, progress: bool = True):
        from vla.data.pipeline import TrainingData

        check_entries(ds_cfg.mixture, ds_cfg.temperature)
        self.names = [e.name for e in ds_cfg.mixture]
        self.batch_size = batch_size
        own_dims = copy.deepcopy(policy_cfg)
        own_dims.state_dim = own_dims.action_dim = 0  # each entry's from its data; the policy's: the largest
        self.parts = []
        for i, entry in enumerate(ds_cfg.mixture):
            try:
                part = TrainingData(entry_dataset_config(ds_cfg, entry), own_dims, seed=seed + 1000 * i,
                                    device=device, num_workers=num_workers, batch_size=batch_size, is_main=is_main,
                                    barrier=barrier, progress=progress)
            except (ConfigError, FeatureMismatchError) as e:
                raise type(e)(f"dataset.mixture[{i}] ({entry.name}): {e}") from None
            self.parts.append(part)
        self.state_dims = [p.policy_cfg.state_dim for p in self.parts]
        self.action_dims = [p.policy_cfg.action_dim for p in self.parts]
        self.policy_cfg = self._mixture_policy_config(policy_cfg)
        dims = zip(self.names, self.state_dims, self.action_dims)
        self.normalizer = EmbodimentNormalizers({name: p.normalizer for name, p in zip(self.names, self.parts)},
                                                {name: {"state_dim": s, "action_dim": a} for name, s, a in dims})
        self.probabilities = torch.as_tensor(mixture_probabilities(
            [p.num_frames for p in self.parts], [e.weight for e in ds_cfg.mixture], ds_cfg.temperature))
        self.generator = torch.Generator().manual_seed(seed)
        self.cached = all(p.cached for p in self.parts)
        self._any_camera_pad = any(p.camera_pad is not None for p in self.parts)
        self._num_workers, self._iter = num_workers, None
        # Per entry: its action dims that are padding (E, D_a) and its absent cameras (E, n_cam).
        self._action_pad = torch.arange(self.policy_cfg.action_dim)[None] >= torch.tensor(self.action_dims)[:, None]
        n_cam = len(self.policy_cfg.image_keys())
        self._camera_pad = torch.stack([p.camera_pad if p.camera_pad is not None else torch.zeros(n_cam, dtype=bool)
                                        for p in self.parts]) if self._any_camera_pad else None
        if self.cached:
            self._store, self._entry_start, self._entry_rows = self._one_store(seed)

    def _one_store(self, seed: int) -> tuple[ChunkSampler, Tensor, Tensor]:
        """Every entry's cached rows in one `ChunkSampler`, state and action normalized with the
        entry's statistics and zero-padded once, up front: a mixture batch is then one gather
        (drawing per entry and concatenating the parts cost half the samples/s). The entries'
        own samplers are released, so the features are held once."""
        from vla.data.chunks import ChunkSampler

        columns = []
        for part in self.parts:  # non-finite values were refused when each entry was opened
            normalized = normalize_batch(dict(part._sampler.columns), part.normalizer)
            widths = {OBS_STATE: self.policy_cfg.state_dim, ACTION: self.policy_cfg.action_dim}
            columns.append({k: pad_last(v, widths[k]) if k in widths else v for k, v in normalized.items()})
        for key in columns[0]:
            shapes = {name: tuple(c[key].shape[1:]) for name, c in zip(self.names, columns)}
            if len(set(shapes.values())) > 1:
                raise FeatureMismatchError(f"dataset.mixture: {key!r} has different shapes across entries {shapes}; "
                                           f"only observation.state and action may differ (they are zero-padded)")
        samplers = [p._sampler for p in self.parts]
        store = ChunkSampler.concatenate(samplers, columns, seed=seed)
        rows = torch.tensor([len(s) for s in samplers])
        for part in self.parts:
            part._sampler = None
        return store, torch.cumsum(rows, 0) - rows, rows

    def _mixture_policy_config(self, policy_cfg: PolicyConfig) -> PolicyConfig:
        cfg = copy.deepcopy(self.parts[0].policy_cfg)
        for attr, dims, key in (("state_dim", self.state_dims, OBS_STATE), ("action_dim", self.action_dims, ACTION)):
            wanted, largest = getattr(policy_cfg, attr), max(dims)
            if wanted and wanted < largest:  # fixed by the user or by train.init_from's checkpoint
                i = dims.index(largest)
                raise FeatureMismatchError(f"dataset.mixture[{i}] ({self.names[i]}): {key!r} has {largest} values, "
                                           f"more than policy.{attr}={wanted}")
            setattr(cfg, attr, max(wanted, largest))
        cfg.embodiments = list(self.names)
        return cfg

    @property
    def num_frames(self) -> int:
        return sum(p.num_frames for p in self.parts)

    def next_batch(self) -> dict:
        if not self.cached:
            if self._iter is None:
                self._iter = iter(self._raw_loader())
            return next(self._iter)
        which = torch.multinomial(self.probabilities, self.batch_size, replacement=True, generator=self.generator)
        return self._gather(which, torch.rand(self.batch_size, generator=self.generator))

    def entry_batch(self, i: int, n: int, generator: torch.Generator) -> dict:
        """``n`` samples of entry ``i`` alone, drawn with ``generator`` (not the training stream),
        finished like a training batch: what the per-entry losses in the training logs read."""
        if self.cached:
            return self._gather(torch.full((n,), i), torch.rand(n, generator=generator))
        from torch.utils.data import default_collate

        part = self.parts[i]
        rows = torch.randint(len(part.dataset), (n,), generator=generator).tolist()
        batch = part.with_blanks(part.finish_raw(default_collate([part.dataset[r] for r in rows])))
        return self._finish(i, resize_images(batch, self.policy_cfg.backbone.image_size))

    def _gather(self, which: Tensor, u: Tensor) -> dict:
        """The cached samples of entries ``which`` (B,) at uniform positions ``u`` (B,) in [0, 1)
        of each entry's rows: one gather from the joint store, then the per-row tags."""
        rows = self._entry_rows[which]
        batch = self._store.get(self._entry_start[which] + torch.minimum((u * rows).long(), rows - 1))
        return self._tag(batch, which)

    def _tag(self, batch: dict, which: Tensor) -> dict:
        """Where each sample came from: its embodiment, its padded action dims, its absent cameras."""
        batch[EMBODIMENT] = which.long()
        if ACTION in batch:
            batch[ACTION_DIM_PAD] = self._action_pad[which]
        if self._camera_pad is not None:
            batch[CAMERA_PAD] = self._camera_pad[which]
        return batch

    def _finish(self, i: int, batch: dict) -> dict:
        """One entry's part of a raw batch: normalized with its statistics, padded, tagged."""
        batch = normalize_batch(batch, self.parts[i].normalizer)
        n = batch[OBS_STATE].shape[0]
        batch[OBS_STATE] = pad_last(batch[OBS_STATE], self.policy_cfg.state_dim)
        if ACTION in batch:
            batch[ACTION] = pad_last(batch[ACTION], self.policy_cfg.action_dim)
        return self._tag(batch, torch.full((n,), i))

    def _raw_loader(self):
        """The raw path (a trainable backbone): one DataLoader over every entry's lerobot dataset,
        samples drawn by entry probability, each collated batch grouped by entry and finished
        by that entry (mapping, future frames, strings), then normalized and padded."""
        from torch.utils.data import DataLoader, default_collate

        tagged = _TaggedDatasets([p.dataset for p in self.parts])
        per_sample = torch.cat([self.probabilities[i].expand(len(p.dataset)) / len(p.dataset)
                                for i, p in enumerate(self.parts)])
        sampler = _DrawForever(per_sample, self.generator)

        size = self.policy_cfg.backbone.image_size

        def collate(items):
            groups: dict[int, list] = {}
            for entry, item in items:
                groups.setdefault(entry, []).append(item)
            finished = [resize_images(self.parts[i].with_blanks(self.parts[i].finish_raw(default_collate(group))), size)
                        for i, group in sorted(groups.items())]
            return concat_batches([self._finish(i, b) for i, b in zip(sorted(groups), finished)])

        return DataLoader(tagged, batch_size=self.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self._num_workers, persistent_workers=self._num_workers > 0)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}  # every draw, cached or raw, comes from it

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class _DrawForever(torch.utils.data.Sampler):
    """Indices drawn with replacement in proportion to ``weights``, without end (torch's
    WeightedRandomSampler draws its whole epoch at once)."""

    def __init__(self, weights: Tensor, generator: torch.Generator, chunk: int = 4096):
        self.weights, self.generator, self.chunk = weights, generator, chunk

    def __iter__(self):
        while True:
            yield from torch.multinomial(self.weights, self.chunk, replacement=True, generator=self.generator).tolist()


class _TaggedDatasets(torch.utils.data.Dataset):
    """Several datasets end to end; item i is (which dataset, its item)."""

    def __init__(self, datasets: list):
        self.datasets = datasets
        self.starts = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int):
        entry = int(np.searchsorted(self.starts, i, side="right") - 1)
        return entry, self.datasets[entry][i - int(self.starts[entry])]
