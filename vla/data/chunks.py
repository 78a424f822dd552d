"""Training samples by index arithmetic over in-memory columns.

For the cached path every input of a sample is a row of a tensor already in memory: the
low-dimensional columns (state, action) come from the dataset's parquet table and the
frame / text features from :mod:`vla.data.cache`. A sample at frame ``i`` reads each key at
the policy's declared offsets (``PolicyConfig.frame_offsets``); frames outside ``i``'s
episode are clamped to its edge and flagged in ``<key>_is_pad`` (LeRobot's convention).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vla.data.mapping import FeatureMap
from vla.features import is_image_key


class ChunkSampler:
    """Draws random training batches ``dict[str, Tensor]`` (see vla.policy for the layout)."""

    def __init__(self, dataset, offsets: dict[str, list[int]], features: dict[str, Tensor], *, seed: int = 0,
                 future_offsets: list[int] | None = None, feature_map: FeatureMap | None = None):
        self.offsets = {k: torch.tensor(v) for k, v in offsets.items()}
        # Future frames (a world model's targets) come from the same feature cache.
        self.future_offsets = torch.tensor(future_offsets) if future_offsets else None
        fmap = feature_map or FeatureMap()
        low_dim = [k for k in offsets if not is_image_key(k)]
        strings = [k for k in low_dim if dataset.meta.features.get(k, {}).get("dtype") == "string"]
        vectors = [k for k in low_dim if k not in strings]
        sources = fmap.source_keys(vectors)
        table = dataset.hf_dataset.select_columns(list(dict.fromkeys(sources + strings + ["episode_index"])))
        table = table.with_format("numpy")
        mapped = fmap.apply({k: torch.from_numpy(np.stack(table[k])).float() for k in sources})
        self.columns = {k: mapped[k] for k in vectors}  # (N, D) each, in the policy's names
        self.strings = {k: np.asarray(table[k]) for k in strings}
        episode = np.asarray(table["episode_index"])
        self.ep_start, self.ep_end = episode_bounds(episode)
        self.task_names = dataset.meta.tasks.sort_values("task_index").index.tolist()
        self.frames = {k[len("frames."):]: v for k, v in features.items() if k.startswith("frames.")}
        self.text = {k[len("text."):]: v for k, v in features.items() if k.startswith("text.")}
        self.task_index = features.get("task_index")
        self.image_offsets = self._image_offsets()
        if self.frames and len(next(iter(self.frames.values()))) != len(episode):
            raise ValueError("feature cache and dataset disagree on the number of frames; delete the cache")
        self.generator = torch.Generator().manual_seed(seed)

    def _image_offsets(self) -> Tensor | None:
        image = {k: tuple(v.tolist()) for k, v in self.offsets.items() if is_image_key(k)}
        if len(set(image.values())) > 1:
            raise ValueError(f"all cameras must share the same frame offsets, got {image}")
        return torch.tensor(next(iter(image.values()))) if image else None

    def __len__(self) -> int:
        return len(self.ep_start)

    def _rows(self, idx: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        return rows_at(idx, offsets, self.ep_start, self.ep_end)

    def get(self, idx: Tensor) -> dict:
        """Samples at dataset rows ``idx`` (B,)."""
        batch: dict = {}
        for key, column in self.columns.items():
            rows, is_pad = self._rows(idx, self.offsets[key])
            batch[key], batch[f"{key}_is_pad"] = column[rows], is_pad  # (B, m, D), (B, m)
        for key, column in self.strings.items():
            rows, is_pad = self._rows(idx, self.offsets[key])
            batch[key], batch[f"{key}_is_pad"] = column[rows.numpy()].tolist(), is_pad  # (B, m) str
        if self.image_offsets is not None and self.frames:
            rows, _ = self._rows(idx, self.image_offsets)
            batch["frames"] = {k: v[rows].float() for k, v in self.frames.items()}  # (B, T, ...)
            task = self.task_index[idx]
            batch["task"] = [self.task_names[i] for i in task.tolist()]
            batch["text"] = {k: v[task].float() if v.is_floating_point() else v[task] for k, v in self.text.items()}
        if self.future_offsets is not None:
            rows, is_pad = self._rows(idx, self.future_offsets)
            batch["future_frames"] = {k: v[rows].float() for k, v in self.frames.items()}  # (B, F, ...)
            batch["future_is_pad"] = is_pad  # (B, F): past the episode's end, clamped to its last frame
        return batch

    def sample(self, batch_size: int) -> dict:
        return self.get(torch.randint(len(self), (batch_size,), generator=self.generator))

    @classmethod
    def concatenate(cls, samplers: list[ChunkSampler], columns: list[dict[str, Tensor]], *,
                    seed: int = 0) -> ChunkSampler:
        """One sampler over the rows of ``samplers`` end to end, with ``columns[i]`` in place of
        sampler i's low-dimensional columns (a mixture's: normalized and padded per entry), so that
        a batch drawn across them is one gather. Row r of sampler i is row ``starts[i] + r``."""
        first = samplers[0]
        out = cls.__new__(cls)
        # a key only some read (an annotation the others lack) is "" in theirs
        out.offsets = {k: v for s in samplers for k, v in s.offsets.items()}
        out.future_offsets, out.image_offsets = first.future_offsets, first.image_offsets
        starts = np.cumsum([0] + [len(s) for s in samplers])[:-1]
        out.ep_start = torch.cat([s.ep_start + int(o) for s, o in zip(samplers, starts)])
        out.ep_end = torch.cat([s.ep_end + int(o) for s, o in zip(samplers, starts)])
        out.columns = {k: torch.cat([c[k] for c in columns]) for k in columns[0]}
        strings = dict.fromkeys(k for s in samplers for k in s.strings)
        out.strings = {k: np.concatenate([s.strings[k] if k in s.strings else np.full(len(s), "", dtype=object)
                                          for s in samplers]) for k in strings}
        out.frames = {k: torch.cat([s.frames[k] for s in samplers]) for k in first.frames}
        out.text = {k: torch.cat([s.text[k] for s in samplers]) for k in first.text}
        task_starts = np.cumsum([0] + [len(s.task_names) for s in samplers])[:-1]
        out.task_index = (torch.cat([s.task_index + int(o) for s, o in zip(samplers, task_starts)])
                          if first.task_index is not None else None)
        out.task_names = [name for s in samplers for name in s.task_names]
        out.generator = torch.Generator().manual_seed(seed)
        return out


def episode_bounds(episode_index: np.ndarray) -> tuple[Tensor, Tensor]:
    """First and one-past-last row of the episode each row belongs to (rows ordered by episode)."""
    starts = np.r_[0, np.flatnonzero(np.diff(episode_index)) + 1]
    ends = np.r_[starts[1:], len(episode_index)]
    lengths = ends - starts
    return torch.from_numpy(np.repeat(starts, lengths)), torch.from_numpy(np.repeat(ends, lengths))


class StringLookup:
    """String features at offsets for the raw (DataLoader) path, where LeRobot's delta
    timestamps stack tensors and cannot carry strings: looked up by the batch's global
    ``index`` with the same clamping and ``<key>_is_pad`` flags as :class:`ChunkSampler`."""

    def __init__(self, dataset, offsets: dict[str, list[int]]):
        self.offsets = {k: torch.tensor(v) for k, v in offsets.items()}
        table = dataset.hf_dataset.select_columns([*offsets, "episode_index", "index"]).with_format("numpy")
        self.values = {k: np.asarray(table[k]) for k in offsets}
        self.index = np.asarray(table["index"])
        self.ep_start, self.ep_end = episode_bounds(np.asarray(table["episode_index"]))

    def __call__(self, global_index: Tensor) -> dict:
        pos = torch.from_numpy(np.searchsorted(self.index, global_index.numpy()))
        out = {}
        for key, offsets in self.offsets.items():
            rows, out[f"{key}_is_pad"] = rows_at(pos, offsets, self.ep_start, self.ep_end)
            out[key] = self.values[key][rows.numpy()].tolist()
        return out


def rows_at(idx: Tensor, offsets: Tensor, ep_start: Tensor, ep_end: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``idx + offsets`` (B, m) clamped to each sample's episode, and where they were clamped."""
    rows = idx[:, None] + offsets[None]
    start, end = ep_start[idx][:, None], ep_end[idx][:, None]
    is_pad = (rows < start) | (rows >= end)
    return torch.maximum(torch.minimum(rows, end - 1), start), is_pad
