"""Frozen backbone features of every dataset frame, computed once and kept on disk.

With a frozen backbone the expensive part of a training step (video decoding plus the
pretrained encoders) is the same at every epoch, so it is done once per (dataset, backbone)
pair. The cache file is named by the backbone's ``cache_key()`` and a fingerprint of the
dataset, so adding episodes or changing the image size builds a new one. Writes are atomic.
A cache serves any subset of the frames it holds (``dataset.episodes=[...]``): rows are matched
by the dataset's global frame ``index``. A subset no cache covers gets a file of its own.

Contents (safetensors, float16 features):
    frames.<name>     (N_frames, ...)   Backbone.encode_frames output for every frame
    text.<name>       (N_tasks, ...)    Backbone.encode_text output for every task
    task_index        (N_frames,)       which task row each frame uses
    index             (N_frames,)       the dataset's global frame index of each row
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from vla.backbone import Backbone
from vla.features import image_key


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLA_CACHE", Path.home() / ".cache" / "vla")) / "features"


def dataset_fingerprint(dataset) -> str:
    """Changes whenever the dataset's frames or episodes change."""
    info = json.loads((Path(dataset.root) / "meta" / "info.json").read_text())
    key = {
        "root": str(Path(dataset.root).resolve()),
        "frames": info.get("total_frames"),
        "episodes": info.get("total_episodes"),
        "features": sorted(info.get("features", {})),
        "data_mtime": max((p.stat().st_mtime_ns for p in (Path(dataset.root) / "data").rglob("*.parquet")), default=0),
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(dataset, backbone: Backbone, cache_dir: Path | None = None, rows: np.ndarray | None = None,
               camera_keys: dict[str, str | None] | None = None) -> Path:
    """The cache file of the whole dataset, or (``rows``: the global frame indices of a subset)
    of that subset. A camera read from a key other than its own name (``camera_keys``) gives
    another file: the same backbone sees other pixels."""
    subset = "" if rows is None else "-rows" + hashlib.sha1(np.ascontiguousarray(rows).tobytes()).hexdigest()[:8]
    renamed = {c: k for c, k in (camera_keys or {}).items() if k != image_key(c)}
    if renamed:
        subset += "-cams" + hashlib.sha1(json.dumps(renamed, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{Path(dataset.root).name}-{dataset_fingerprint(dataset)}-{backbone.cache_key()}{subset}.safetensors"
    return Path(cache_dir or default_cache_dir()) / name


def dataset_rows(dataset) -> np.ndarray:
    """The global frame index of every row of an opened dataset (a subset of episodes has fewer)."""
    return np.asarray(dataset.hf_dataset.with_format("numpy")["index"]).astype(np.int64)


def select_rows(cached: dict[str, Tensor], rows: np.ndarray) -> dict[str, Tensor] | None:
    """The cached per-frame tensors for ``rows`` (global frame indices), in that order; None if the
    cache lacks any of them. A cache without an ``index`` (older files) holds the whole dataset."""
    index = cached["index"].numpy() if "index" in cached else np.arange(len(cached["task_index"]))
    if len(rows) and (rows.min() < 0 or rows.max() > index.max(initial=-1)):
        return None
    position = np.full(int(index.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[index] = np.arange(len(index))
    take = position[rows]
    if (take < 0).any():
        return None
    if len(take) == len(index) and (take == np.arange(len(index))).all():
        return cached
    take_t = torch.from_numpy(take)
    per_frame = {k for k in cached if k.startswith("frames.")} | {"task_index", "index"}
    return {k: v[take_t] if k in per_frame else v for k, v in cached.items()}


def iter_episode_frames(dataset, keys: list[str]):
    """Yield ``{key: (n, 3, H, W) float in [0, 1]}`` for every episode, in dataset row order.

    Video features are decoded sequentially per episode with lerobot's ``decode_video_frames``
    (one seek per episode instead of one per frame: an order of magnitude faster than
    indexing the dataset frame by frame); image features go through the dataset itself.
    """
    from lerobot.datasets.video_utils import decode_video_frames

    from vla.data.source import resolve_video_backend

    backend = resolve_video_backend()
    table = dataset.hf_dataset.select_columns(["episode_index", "timestamp"]).with_format("numpy")
    episodes, timestamps = np.asarray(table["episode_index"]), np.asarray(table["timestamp"])
    starts = np.r_[0, np.flatnonzero(np.diff(episodes)) + 1, len(episodes)]
    for a, b in zip(starts[:-1], starts[1:]):
        ep = int(episodes[a])
        out = {}
        for key in keys:
            if key in dataset.meta.video_keys:
                offset = dataset.meta.episodes[ep][f"videos/{key}/from_timestamp"]
                path = Path(dataset.root) / dataset.meta.get_video_file_path(ep, key)
                out[key] = decode_video_frames(path, [offset + float(t) for t in timestamps[a:b]],
                                               dataset.tolerance_s, backend)
            else:
                out[key] = torch.stack([dataset[i][key] for i in range(a, b)])
        yield out


@torch.no_grad()
def build_feature_cache(dataset, backbone: Backbone, *, cache_dir: Path | None = None, batch_size: int = 8,
                        progress: bool = True, camera_keys: dict[str, str | None] | None = None) -> dict[str, Tensor]:
    """Load the cached features of ``dataset`` (a LeRobotDataset), building them if missing.

    Camera ``c`` of the backbone reads the dataset's ``observation.images.<c>``, or the key
    ``camera_keys[c]`` names (a `FeatureMap`'s camera sources); None: one the dataset lacks,
    encoded as black frames (its tokens are masked in training).

    ``batch_size`` frames go through the vision encoder at once. Small batches are faster on
    CPU: EfficientNet-Lite0's activations then stay in cache (2 cores, 96 px, two cameras:
    120-180 frames/s at 8 against ~95 at 64)."""
    rows = dataset_rows(dataset)
    whole = len(rows) == dataset.meta.total_frames
    path = cache_path(dataset, backbone, cache_dir, None if whole else rows, camera_keys)
    # the whole dataset's first
    for candidate in dict.fromkeys([cache_path(dataset, backbone, cache_dir, camera_keys=camera_keys), path]):
        if candidate.exists():
            selected = select_rows(load_file(candidate), rows)
            if selected is not None:
                return selected
    if not backbone.frozen:
        raise ValueError("feature caching needs a frozen backbone (freeze_vision and freeze_text)")
    cams = backbone.config.cameras
    keys = {c: (camera_keys or {}).get(c, image_key(c)) for c in cams}  # None: a camera the dataset lacks
    present = [k for k in keys.values() if k is not None]
    if not present:
        raise ValueError("feature caching needs at least one camera the dataset has")
    device = next(backbone.parameters()).device
    chunks: dict[str, list[Tensor]] = {}
    bar = tqdm(total=dataset.num_frames, desc="caching backbone features", unit="frame", disable=not progress)
    for episode in iter_episode_frames(dataset, present):
        n = len(episode[present[0]])
        for i in range(0, n, batch_size):
            real = episode[present[0]][i:i + batch_size]
            # a lacking camera's features are those of a black frame; its tokens are masked in training
            feats = backbone.encode_frames({c: (episode[k][i:i + batch_size] if k is not None
                                                else torch.zeros_like(real)).to(device) for c, k in keys.items()})
            for name, value in feats.items():
                chunks.setdefault(f"frames.{name}", []).append(value.half().cpu())
        bar.update(n)
    bar.close()
    out = {k: torch.cat(v) for k, v in chunks.items()}
    # LeRobot's task table: task strings indexed by task_index.
    tasks = dataset.meta.tasks.sort_values("task_index").index.tolist()
    out["task_index"] = torch.from_numpy(np.asarray(dataset.hf_dataset.with_format("numpy")["task_index"])).long()
    out["index"] = torch.from_numpy(rows)
    for name, value in backbone.encode_text(tasks).items():
        out[f"text.{name}"] = value.half().cpu() if value.is_floating_point() else value.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in out.items()}, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache behind
    return out
