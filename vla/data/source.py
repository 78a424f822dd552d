"""Reading LeRobot v3.0 datasets for training: open, check, and say which frames to read.

    ds = open_dataset("runs/data/lift")                       # a local directory ...
    ds = open_dataset("lerobot/pusht", root="cache/pusht")    # ... or a hub repo id (online)
    check_features(ds.meta.features, {"observation.state": (11,), "action": (7,)})
    ds = open_dataset("runs/data/lift", delta_timestamps=delta_timestamps_for(
        ds.fps, n_obs_steps=2, horizon=16, observation_keys=["observation.state"]))

A local directory is checked before lerobot reads it (`scan_dataset`): lerobot globs every
parquet file under ``data/``, so the leftovers of a killed recording would otherwise be read as
if they were episodes, or make loading fail far from the cause.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub.errors import HFValidationError, HTTPError
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla.errors import DatasetError, FeatureMismatchError

logger = logging.getLogger(__name__)

INFO_FILE = Path("meta/info.json")
STATS_FILE = Path("meta/stats.json")
EPISODES_DIR = Path("meta/episodes")




@cache
def resolve_video_backend(requested: str | None = None) -> str:
    """``requested`` if given, else lerobot's choice: torchcodec when it loads, else PyAV.

    lerobot logs the whole torchcodec load traceback on every fallback (torchcodec's wheel
    needs system FFmpeg libraries this machine lacks); resolving once, quietly, keeps that
    out of every dataset open and DataLoader worker.
    """
    if requested:
        return requested
    from lerobot.utils.import_utils import get_safe_default_video_backend

    lerobot_logger = logging.getLogger("lerobot.utils.import_utils")
    level = lerobot_logger.level
    lerobot_logger.setLevel(logging.ERROR)
    try:
        backend = get_safe_default_video_backend()
    finally:
        lerobot_logger.setLevel(level)
    logger.info("video decoding backend: %s", backend)
    return backend


def open_dataset(
    source: str | Path,
    *,
    root: str | Path | None = None,
    delta_timestamps: dict[str, list[float]] | None = None,
    episodes: list[int] | None = None,
    video_backend: str | None = None,
) -> LeRobotDataset:
    """A `LeRobotDataset` from a local dataset directory or a repo id ("owner/name").

    For a repo id, ``root`` is its local directory: read from there when it holds the dataset
    (a recording, or an earlier download), else downloaded there from the hub (into lerobot's
    cache when None). Raises `DatasetError` (one line) when a path does not exist, is not a
    dataset, was left half-written by a killed recording, or when a repo id is neither on disk
    nor reachable (offline: HF_HUB_OFFLINE=1, or no network).
    """
    kwargs = dict(delta_timestamps=delta_timestamps, episodes=episodes,
                  video_backend=resolve_video_backend(video_backend))
    path = Path(source).expanduser()
    if path.is_dir():
        if root is not None and Path(root).resolve() != path.resolve():
            raise ValueError(f"root={root!r} only applies to repo ids, not to the local directory {path}")
        if not (path / INFO_FILE).exists():
            raise DatasetError(f"{path} is not a LeRobot dataset (it has no {INFO_FILE})")
        require_consistent(path)
        _check_episodes(path, episodes)
        try:
            return LeRobotDataset(f"local/{path.name}", root=path, **kwargs)
        except (OSError, HTTPError) as e:  # lerobot falls back to the hub when local files are missing
            raise DatasetError(f"{path}: lerobot could not load it from disk ({_one_line(e)})") from None
    if path.exists():
        raise DatasetError(f"{path} is a file, not a LeRobot dataset directory")
    if isinstance(source, Path) or _looks_like_path(source):
        raise DatasetError(f"no dataset at {path}: the path does not exist")
    if root is not None and (Path(root) / INFO_FILE).exists():
        require_consistent(Path(root))
        _check_episodes(Path(root), episodes)
    try:
        return LeRobotDataset(str(source), root=root, **kwargs)
    except (OSError, HTTPError, HFValidationError) as e:
        where = "a local dataset directory" if root is None else f"a dataset in {root}"
        raise DatasetError(
            f"{source!r} is neither {where} nor reachable on the Hugging Face Hub "
            f"({type(e).__name__}: {_one_line(e)})"
        ) from None


def _check_episodes(root: Path, episodes: list[int] | None) -> None:
    """Refuse a selection of episodes the dataset does not have (lerobot would warn, then fail
    with "corresponds to no data" or train on fewer episodes than asked for)."""
    if episodes is None:
        return
    total = (_read_json(root / INFO_FILE) or {}).get("total_episodes", 0)
    missing = sorted({e for e in episodes if not 0 <= e < total})
    if not episodes or missing:
        raise DatasetError(f"dataset.episodes={list(episodes)}: {root} has episodes 0..{total - 1}"
                           + (f"; no episode {missing}" if missing else ""))


def _looks_like_path(source: str) -> bool:
    # A repo id is exactly "owner/name"; anything else that does not exist is a missing path.
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def delta_timestamps(offsets: dict[str, list[int]], fps: float) -> dict[str, list[float]]:
    """Frame offsets per key (``PolicyConfig.frame_offsets``) -> LeRobot's delta timestamps in seconds."""
    return {key: [o / fps for o in offs] for key, offs in offsets.items()}


def check_features(features: dict, required: dict[str, tuple[int, ...] | None]) -> None:
    """Raise `FeatureMismatchError` unless ``features`` has every ``required`` key with that shape.

    ``features`` is lerobot's ``dataset.meta.features`` (or the same as a `FeatureMap` maps it).
    Shapes are those of one frame as the dataset returns it: (D,) for vectors, (C, H, W) for
    cameras (stored as (H, W, C)); None accepts any shape.
    """
    for key, shape in required.items():
        if key not in features:
            raise FeatureMismatchError(
                f"the policy needs {key!r} but the dataset has no such feature (it has {sorted(features)}); "
                f"dataset.features says where a feature comes from (e.g. dataset.features.cameras.top="
                f"observation.image)"
            )
        actual = _frame_shape(features[key])
        if shape is not None and tuple(shape) != actual:
            raise FeatureMismatchError(
                f"feature {key!r}: the policy expects shape {tuple(shape)}, the dataset has {actual}"
            )


def check_finite(dataset, keys: list[str]) -> None:
    """Refuse NaN or inf in the numeric features ``keys`` of an opened LeRobotDataset, naming the
    first episode and frame that has one. One pass over those parquet columns (milliseconds for
    thousands of frames); without it a training run stops at whichever batch happens to sample
    such a frame, or never notices."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.hf_dataset.data
    for key in keys:
        if key not in table.column_names:
            continue
        column = table.column(key)
        if pa.types.is_floating(column.type):
            values = column.to_numpy().reshape(len(column), -1)
        elif pa.types.is_fixed_size_list(column.type) and pa.types.is_floating(column.type.value_type):
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(len(column), -1)
        else:
            continue
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            episode, frame = table.column("episode_index")[row].as_py(), table.column("frame_index")[row].as_py()
            raise DatasetError(f"{dataset.root}: non-finite values (NaN or inf) in {key!r} in {int(bad.sum())} "
                               f"frame(s), the first at episode {episode}, frame {frame}; fix them or leave those "
                               f"episodes out with dataset.episodes=[...]")


def _frame_shape(feature: dict) -> tuple[int, ...]:
    shape = tuple(feature["shape"])
    if feature["dtype"] in ("image", "video") and len(shape) == 3:
        return (shape[2], shape[0], shape[1])  # lerobot returns camera frames channel-first
    return shape


@dataclass
class DatasetScan:
    """What is on disk in a dataset directory, versus what its metadata has committed.

    An episode is committed once its row is in a complete ``meta/episodes`` parquet file:
    lerobot writes that file last when it saves an episode. Everything newer is what an
    interrupted save left behind.
    """

    root: Path
    info: dict | None                       # meta/info.json, None when unreadable
    episodes: pa.Table | None = None        # committed rows: index, length, file locations
    episode_files: list[Path] = field(default_factory=list)  # the complete meta/episodes files
    leftovers: list[Path] = field(default_factory=list)      # files of unfinished saves
    stale_totals: bool = False              # info.json counts episodes that were never committed
    stats_ok: bool = True

    @property
    def num_episodes(self) -> int:
        return 0 if self.episodes is None else self.episodes.num_rows

    @property
    def num_frames(self) -> int:
        return 0 if self.episodes is None else sum(self.episodes.column("length").to_pylist())

    def problems(self) -> list[str]:
        """What would make lerobot read this directory wrongly: parquet files of an unfinished
        save (it globs them all), or totals / stats that count an uncommitted episode. Other
        leftovers (a video, encoder scratch dirs) are never read; `repair_dataset` removes them."""
        if self.info is None:
            return ["meta/info.json is unreadable"]
        found = [f"leftover {p.relative_to(self.root)}" for p in self.leftovers if p.suffix == ".parquet"]
        if self.stale_totals:
            found.append(f"info.json counts {self.info['total_episodes']} episodes, "
                         f"{self.num_episodes} were committed")
        if not self.stats_ok:
            found.append("meta/stats.json is unreadable")
        return found


def scan_dataset(root: str | Path) -> DatasetScan:
    """Compare the files under ``root`` with its committed metadata, reading only footers and
    the location columns of meta/episodes (0.3 s for 300 episodes). Raises `DatasetError`
    for damage an interrupted write cannot explain."""
    root = Path(root)
    scan = DatasetScan(root, _read_json(root / INFO_FILE))
    if scan.info is None:
        return scan
    video_keys = [key for key, ft in scan.info["features"].items() if ft["dtype"] == "video"]
    _read_committed_episodes(scan, ["data", *(f"videos/{key}" for key in video_keys)])
    _sort_files(scan, sorted((root / "data").glob("*/*.parquet")), scan.info["data_path"])
    for key in video_keys:
        _sort_files(scan, sorted((root / "videos" / key).glob("*/*.mp4")), scan.info["video_path"], key)
    scan.leftovers += [p for p in root.glob("tmp*") if p.is_dir()]  # lerobot's encoder scratch dirs
    scan.leftovers += [p for p in [root / "images"] if p.is_dir()]  # PNG staging of unsaved episodes
    scan.leftovers += sorted((root / "meta").glob("*.tmp"))  # our atomic writes, cut short
    totals = (scan.info["total_episodes"], scan.info["total_frames"])
    scan.stale_totals = totals != (scan.num_episodes, scan.num_frames)
    scan.stats_ok = scan.num_episodes == 0 or _read_json(root / STATS_FILE) is not None
    return scan


def require_consistent(root: Path) -> None:
    """Raise `DatasetError` if ``root`` holds the half-written state of a killed recording."""
    problems = scan_dataset(root).problems()
    if problems:
        raise DatasetError(
            f"{root} was left half-written by an interrupted (or still running) recording "
            f"({'; '.join(problems[:3])}); vla.data.recorder.repair_dataset(root) rolls it back "
            "to its last saved episode"
        )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_committed_episodes(scan: DatasetScan, file_families: list[str]) -> None:
    """Fill ``scan.episodes`` from every complete meta/episodes file; the newest file may be one
    a kill cut short (lerobot closes each file before it starts the next): a leftover."""
    columns = ["episode_index", "length"]
    columns += [f"{family}/{part}_index" for family in file_families for part in ("chunk", "file")]
    files = sorted((scan.root / EPISODES_DIR).glob("*/*.parquet"))
    tables = []
    for i, path in enumerate(files):
        try:
            tables.append(pq.ParquetFile(path).read(columns=columns))
        except (OSError, pa.ArrowInvalid):
            if i != len(files) - 1:
                raise DatasetError(f"{path} is unreadable but is not the newest episode file: "
                                   "the dataset is damaged") from None
            scan.leftovers.append(path)
            continue
        scan.episode_files.append(path)
    if not tables:
        return
    scan.episodes = pa.concat_tables(tables)
    indices = scan.episodes.column("episode_index").to_pylist()
    if indices != list(range(len(indices))):
        raise DatasetError(f"{scan.root}: the episode indices in meta/episodes are not 0..{len(indices) - 1}: "
                           "the dataset is damaged")


def _sort_files(scan: DatasetScan, on_disk: list[Path], template: str, video_key: str | None = None) -> None:
    """Check the files of one family (the data, or one camera's videos) against the committed
    episodes: the referenced ones must be complete; unreferenced ones newer than all of them
    are leftovers of an unfinished save."""
    prefix = "data" if video_key is None else f"videos/{video_key}"
    referenced = set()
    if scan.episodes is not None:
        indices = zip(scan.episodes.column(f"{prefix}/chunk_index").to_pylist(),
                      scan.episodes.column(f"{prefix}/file_index").to_pylist(), strict=True)
        referenced = {scan.root / template.format(chunk_index=c, file_index=f, video_key=video_key)
                      for c, f in set(indices)}
    for path in referenced:
        if not path.exists() or (video_key is None and not _parquet_complete(path)):
            raise DatasetError(f"{path} belongs to a saved episode but is missing or unreadable: "
                               "the dataset is damaged")
    newest = max(referenced, default=None)
    for path in on_disk:
        if path in referenced:
            continue
        if newest is not None and path < newest:  # older than committed files: no kill explains it
            raise DatasetError(f"{path} is not referenced by any saved episode: the dataset is damaged")
        scan.leftovers.append(path)


def _parquet_complete(path: Path) -> bool:
    """A parquet file is complete once its footer is written (lerobot writes it on close)."""
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):
        return False
    return True
