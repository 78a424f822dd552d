"""Per-feature normalization whose statistics travel inside the policy's checkpoint.

    norm = Normalizer(dataset.meta.stats, {"observation.state": "mean_std", "action": "min_max"})
    x = norm.normalize("action", batch["action"])       # (B, H, D_a), any leading dims
    a = norm.unnormalize("action", policy_output)

Every mode is an affine map ``(x - center) / scale`` per element of the last dims:

    mean_std   center = mean,             scale = std
    min_max    center = (min + max) / 2,  scale = (max - min) / 2      -> [-1, 1]
    quantile   center = (q01 + q99) / 2,  scale = (q99 - q01) / 2      -> clipped to [-1, 1]
    identity   unchanged

A scale below ``eps`` (a constant dimension, e.g. an unused gripper joint) is replaced by 1,
so that dimension maps to ``x - center`` (0 for the constant) instead of blowing up. The
quantile mode clips like pi0 / Dita, so unnormalize(normalize(x)) == x only inside [q01, q99].

lerobot 0.6.1 stores q01..q99 in stats.json, but aggregated over episodes as a count-weighted
mean of per-episode quantiles (an approximation); `compute_quantiles` computes exact ones from
the parquet columns, and covers datasets whose stats have none.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

MODES = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99"), "identity": ()}


class Normalizer(nn.Module):
    """Normalizes the features named in ``modes`` with statistics held as buffers.

    Args:
        stats: lerobot stats, ``{key: {"mean": array, "std": ..., "min": ..., "max": ...,
            "q01": ..., "q99": ...}}`` (``dataset.meta.stats``); only the statistics a key's
            mode needs are kept. None builds empty buffers to be filled by ``load_state_dict``.
        modes: ``{key: "mean_std" | "min_max" | "quantile" | "identity"}``.
        eps: smallest scale treated as non-zero.
    """

    def __init__(self, stats: dict[str, dict] | None, modes: dict[str, str], *, eps: float = 1e-8):
        super().__init__()
        self.modes = dict(modes)
        self.eps = eps
        self._names: dict[tuple[str, str], str] = {}
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(f"unknown normalization mode {mode!r} for {key!r}; choose from {sorted(MODES)}")
            for stat in MODES[mode]:
                value = torch.empty(0) if stats is None else _stat(stats, key, stat, mode)
                self._register(key, stat, value)

    def keys(self) -> list[str]:
        """The features this normalizer has a mode for (identity included)."""
        return list(self.modes)

    def _register(self, key: str, stat: str, value: Tensor) -> None:
        name = f"{key.replace('.', '__')}__{stat}"  # buffer names cannot contain "."
        if name in self._buffers:
            raise ValueError(f"features {key!r} and another key map to the same buffer name {name!r}")
        self._names[key, stat] = name
        self.register_buffer(name, value.to(torch.float32))

    def _affine(self, key: str, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(center, scale) shaped like one feature frame, or None for identity."""
        if key not in self.modes:
            raise KeyError(f"no normalization for feature {key!r}; the normalizer has {sorted(self.modes)}")
        mode = self.modes[key]
        if mode == "identity":
            return None
        a, b = (getattr(self, self._names[key, stat]) for stat in MODES[mode])
        if a.numel() == 0:
            raise RuntimeError(f"statistics for {key!r} are empty: build the Normalizer from stats "
                               "or load a state dict")
        center, scale = (a, b) if mode == "mean_std" else ((a + b) / 2, (b - a) / 2)
        scale = torch.where(scale < self.eps, torch.ones_like(scale), scale)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return center.to(dtype), scale.to(dtype)

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """``x``: (..., *feature_shape), e.g. (B, T, D) or (B, T, 3, H, W); same shape out."""
        affine = self._affine(key, x)
        if affine is None:
            return x
        y = (x - affine[0]) / affine[1]
        return y.clamp(-1.0, 1.0) if self.modes[key] == "quantile" else y

    def unnormalize(self, key: str, y: Tensor) -> Tensor:
        """Inverse of `normalize` (for quantile, of its unclipped part)."""
        affine = self._affine(key, y)
        return y if affine is None else y * affine[1] + affine[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers built with stats=None are empty; take the checkpoint's shapes before copying.
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if incoming is not None and buffer.shape != incoming.shape:
                self._buffers[name] = torch.empty_like(incoming, dtype=torch.float32, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def to_json(self) -> str:
        """A readable copy of the modes and statistics, to save beside a checkpoint."""
        features = {
            key: {"mode": mode, **{stat: getattr(self, self._names[key, stat]).tolist() for stat in MODES[mode]}}
            for key, mode in self.modes.items()
        }
        return json.dumps({"eps": self.eps, "features": features}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Normalizer:
        data = json.loads(text)
        modes = {key: entry["mode"] for key, entry in data["features"].items()}
        stats = {key: {k: v for k, v in entry.items() if k != "mode"} for key, entry in data["features"].items()}
        return cls(stats, modes, eps=data["eps"])


def normalize_batch(batch: dict, normalizer: Normalizer) -> dict:
    """Normalize every low-dimensional key the normalizer knows, refusing non-finite values."""
    from vla.errors import TrainingError

    for key in normalizer.keys():
        if key in batch:
            x = batch[key]
            if not torch.isfinite(x).all():
                raise TrainingError(f"non-finite values (NaN or inf) in batch key {key!r}")
            batch[key] = normalizer.normalize(key, x)
    return batch


def _stat(stats: dict[str, dict], key: str, stat: str, mode: str) -> Tensor:
    if key not in stats:
        raise KeyError(f"the dataset stats have no feature {key!r} (they have {sorted(stats)})")
    if stat not in stats[key]:
        hint = "; compute_quantiles(dataset, keys) computes them" if stat in ("q01", "q99") else ""
        raise KeyError(f"stats of {key!r} have no {stat!r}, which mode {mode!r} needs{hint}")
    return torch.as_tensor(np.asarray(stats[key][stat], dtype=np.float32))


def compute_quantiles(dataset, keys: list[str], quantiles: tuple[float, ...] = (0.01, 0.99)) -> dict[str, dict]:
    """Exact per-dimension quantiles of non-visual features, from the parquet columns.

    ``dataset`` is a LeRobotDataset; returns ``{key: {"q01": (D,), "q99": (D,)}}`` in the
    stats layout, to merge into ``dataset.meta.stats`` before building a Normalizer. Camera
    features are refused: their quantiles would need every video frame decoded.
    """
    visual = [k for k in keys if dataset.meta.features[k]["dtype"] in ("image", "video")]
    if visual:
        raise ValueError(f"compute_quantiles reads parquet columns only; {visual} are camera features")
    table = dataset.hf_dataset.with_format("arrow").select_columns(keys)[:]
    result = {}
    for key in keys:
        column = table.column(key).combine_chunks()
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            values = column.flatten().to_numpy().reshape(len(column), -1)  # (N, D)
        else:
            values = column.to_numpy()  # (N,)
        result[key] = {f"q{round(q * 100):02d}": np.quantile(values, q, axis=0).astype(np.float32) for q in quantiles}
    return result


def pad_last(x: Tensor, width: int) -> Tensor:
    """Zero-pad the last axis of ``x`` to ``width``: a mixture's narrower embodiment, normalized,
    in the policy's widest state or action layout."""
    return torch.nn.functional.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


class EmbodimentNormalizers(nn.Module):
    """The statistics of every entry of a dataset mixture, by entry name (its embodiment), with
    each entry's state and action widths: what a mixture checkpoint keeps in
    normalization.json. `select` gives one embodiment's `Normalizer` to run with."""

    def __init__(self, normalizers: dict[str, Normalizer], dims: dict[str, dict[str, int]]):
        super().__init__()
        self.parts = nn.ModuleDict(normalizers)
        self.dims = {name: dict(d) for name, d in dims.items()}  # name -> {"state_dim": D_s, "action_dim": D_a}

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    def select(self, name: str | None) -> tuple[int, Normalizer, dict[str, int]]:
        """(index, statistics, widths) of embodiment ``name``; None picks the only one. A name the
        checkpoint does not know is a one-line error listing those it does."""
        from vla.errors import ConfigError

        names = self.names
        if name is None:
            if len(names) > 1:
                raise ConfigError(f"this checkpoint knows {len(names)} embodiments ({', '.join(names)}); "
                                  f"choose one with eval.embodiment=<name> (or deploy.embodiment, collect.embodiment)")
            name = names[0]
        if name not in self.parts:
            raise ConfigError(f"embodiment {name!r}: this checkpoint knows {', '.join(names)}")
        return names.index(name), self.parts[name], self.dims[name]

    def to_json(self) -> str:
        return json.dumps({"embodiments": {name: {**json.loads(n.to_json()), **self.dims[name]}
                                           for name, n in self.parts.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EmbodimentNormalizers":
        data = json.loads(text)["embodiments"]
        dims = {name: {k: entry[k] for k in ("state_dim", "action_dim")} for name, entry in data.items()}
        return cls({name: Normalizer.from_json(json.dumps(entry)) for name, entry in data.items()}, dims)


def load_normalizer(text: str) -> Normalizer | EmbodimentNormalizers:
    """normalization.json of a checkpoint: one dataset's statistics, or a mixture's per entry."""
    return EmbodimentNormalizers.from_json(text) if "embodiments" in json.loads(text) else Normalizer.from_json(text)
