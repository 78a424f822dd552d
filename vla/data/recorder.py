"""Recording episodes into a LeRobot v3.0 dataset, durable one episode at a time.

    with EpisodeRecorder.for_env(env, root="data/lift", robot_type="panda") as rec:
        rec.add_frame(obs, action, phase="grasp the red cube")   # per step
        rec.save_episode()                                        # or rec.discard_episode()

Crash safety. lerobot 0.6.1 keeps two parquet files open across episodes (the frame data and
the episode metadata, the latter behind a buffer of 10 episodes) and writes their footers only
in ``finalize()``; a killed process leaves files without footers, i.e. every episode since the
last finalize unreadable. It also appends each episode's video to one growing mp4. Finalizing
and resuming after every episode would fix that but costs O(dataset) per episode (resume
re-reads all episode metadata: 0.1 s at 1 episode, 1.2 s at 200, and a new HF datasets cache
copy each time). Instead the recorder:

- sets lerobot's file-size limits so small that every episode rolls over to new files
  (one data parquet, one metadata parquet, one mp4 per camera per episode; nothing saved is
  ever rewritten), and closes both parquet writers right after each ``save_episode``. Closing
  the metadata file is the commit point: lerobot writes it after the data and videos.
- registers new tasks in ``meta/tasks.parquet`` atomically (lerobot rewrites it in place), and
  keeps a copy of the last committed ``meta/info.json`` in ``.vla/`` (lerobot rewrites that in
  place too, so a kill mid-write would otherwise lose the feature schema).
- encodes video while recording (lerobot's streaming encoder), so saving takes ~0.2 s instead
  of ~0.8 s for a 150-frame, two-camera episode, and no PNG staging files pile up.
- keeps the video encoder's threads at normal priority: SVT-AV1 asks for SCHED_FIFO 99 where
  the process may (root), which would preempt a control loop recording beside it
  (`vla.scheduling.without_realtime_threads`).
- on opening an existing dataset, rolls back whatever an interrupted save left
  (`repair_dataset`), under an exclusive lock, so two recorders never write one dataset.

The cost, measured on the lift expert (62 frames, two 96x96 cameras, 2 CPU cores): 3 ms per
episode to close the files and copy info.json, inside a save_episode of 0.09 s; a discarded
episode costs ~1 s (lerobot's encoder threads poll their stop flag once a second); and many
small files, which lerobot's ``aggregate_datasets`` packs into large shards when a dataset is
done.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from gymnasium import spaces
from lerobot.datasets.compute_stats import aggregate_stats
from lerobot.datasets.io_utils import load_info, load_tasks
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.datasets.utils import DEFAULT_TASKS_PATH, serialize_dict
from lerobot.utils.constants import DEFAULT_FEATURES
from lerobot.utils.utils import SuppressProgressBars, unflatten_dict

from vla.data.source import (
    INFO_FILE,
    STATS_FILE,
    DatasetError,
    DatasetScan,
    resolve_video_backend,
    scan_dataset,
)
from vla.features import ACTION, OBS_IMAGES, OBS_PREFIX, PHASE, TASK, is_image_key
from vla.scheduling import without_realtime_threads

logger = logging.getLogger(__name__)

DEFAULT_FPS = 20
# Any file that exists is "full" at this size, so lerobot starts new files for every episode.
ROLL_EVERY_EPISODE_MB = 1e-6
# Frames the streaming encoder may buffer per camera. lerobot drops frames (with a warning)
# when its queue is full, which would desynchronise video and data; a simulator is not
# real-time, so the queue is made large enough never to fill (96x96 RGB: 27 kB a frame).
ENCODER_QUEUE_FRAMES = 100_000
SIDECAR = ".vla"  # recorder.lock, and info.json as of the last committed episode


def features_from_space(observation_space: spaces.Dict, action_space: spaces.Box,
                        names: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """lerobot ``features`` for an env's observations and actions (see vla.features).

    ``observation.images.<cam>`` uint8 (H, W, 3) -> "video"; other ``observation.*`` boxes and
    the action -> float32 vectors, named with ``names[key]`` (what the env declares: its
    ``feature_names``) or unnamed; ``task`` is not a feature (lerobot stores it per frame in its
    own ``task`` field); the expert's phase label is added as the string feature ``annotation.phase``.
    """
    names = names or {}
    features = {}
    for key, space in observation_space.spaces.items():
        if key == TASK:
            continue
        if is_image_key(key):
            if not (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
                    and space.shape[2] == 3):
                raise ValueError(f"{key!r} must be a uint8 Box of shape (H, W, 3), got {space}")
            features[key] = {"dtype": "video", "shape": tuple(space.shape), "names": ["height", "width", "channels"]}
        elif key.startswith(OBS_PREFIX) and isinstance(space, spaces.Box):
            features[key] = _vector_feature(key, space, names.get(key))
        else:
            raise ValueError(f"cannot record observation {key!r} ({space}): expected {OBS_IMAGES}<camera> "
                             f"images, a Box under {OBS_PREFIX!r}, or {TASK!r}")
    features[ACTION] = _vector_feature(ACTION, action_space, names.get(ACTION))
    features[PHASE] = {"dtype": "string", "shape": (1,), "names": None}
    return features


def _vector_feature(key: str, space: spaces.Space, names: list[str] | None) -> dict:
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{key!r} must be a 1-D Box, got {space}")
    size = space.shape[0]
    if names is not None and len(names) != size:
        raise ValueError(f"{key!r}: {len(names)} names for a vector of {size}")
    return {"dtype": "float32", "shape": (size,), "names": list(names) if names else None}


class EpisodeRecorder:
    """Writes episodes to the LeRobot v3.0 dataset at ``root``, creating it or appending to it.

    Args:
        root: dataset directory; created if missing (or empty), appended to if it holds a
            dataset with the same features and fps.
        features: lerobot features, usually `features_from_space(...)`.
        fps: frames per second of the recording (20 for the tabletop tasks).
        robot_type: stored in info.json when the dataset is created.
        repo_id: the dataset's hub name (for a later push); "local/<directory name>" if None.
        task: instruction for frames whose observation has no ``task`` entry.
    """

    def __init__(self, root: str | Path, features: dict[str, dict], *, fps: int = DEFAULT_FPS,
                 robot_type: str | None = None, repo_id: str | None = None, task: str | None = None):
        self.root = Path(root)
        self.repo_id = repo_id or f"local/{self.root.name}"
        self.features = features
        self.task = task
        self._frames = 0
        self._episode_tasks: set[str] = set()
        os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder logs ~20 lines per episode otherwise
        writer_args = dict(video_backend=resolve_video_backend(), streaming_encoding=True,
                           encoder_queue_maxsize=ENCODER_QUEUE_FRAMES)
        if (self.root / INFO_FILE).exists() or (self.root / SIDECAR).exists():
            self._lock = acquire_lock(self.root)
            self.dataset = self._open_existing(fps, writer_args)
        else:
            self._remove_empty_root()
            self.dataset = LeRobotDataset.create(
                self.repo_id, fps, features, root=self.root, robot_type=robot_type,
                data_files_size_in_mb=ROLL_EVERY_EPISODE_MB, video_files_size_in_mb=ROLL_EVERY_EPISODE_MB,
                **writer_args,
            )
            self._lock = acquire_lock(self.root)
        _snapshot_info(self.root)

    @classmethod
    def for_env(cls, env: gym.Env, *, root: str | Path, fps: int | None = None, **kwargs) -> EpisodeRecorder:
        """A recorder for ``env``'s observation and action spaces; fps defaults to the env's
        ``metadata["render_fps"]`` (its control rate), else DEFAULT_FPS."""
        fps = fps or env.metadata.get("render_fps") or DEFAULT_FPS
        names = getattr(env.unwrapped, "feature_names", None)  # an env says what its vectors hold
        return cls(root, features_from_space(env.observation_space, env.action_space, names), fps=fps, **kwargs)

    def _remove_empty_root(self) -> None:
        if self.root.exists():
            if any(self.root.iterdir()):
                raise DatasetError(f"{self.root} exists and is not a LeRobot dataset (no {INFO_FILE})")
            self.root.rmdir()  # lerobot's create() insists on making the directory itself

    def _open_existing(self, fps: int, writer_args: dict) -> LeRobotDataset:
        try:
            for action in _repair(self.root):
                logger.warning("%s: %s", self.root, action)
            _snapshot_info(self.root)  # before the chunk settings below rewrite info.json in place
            info = load_info(self.root)
            _check_same_features(self.root, info.features, self.features)
            if info.fps != fps:
                raise DatasetError(f"cannot append to {self.root}: it was recorded at {info.fps} fps, not {fps}")
            dataset = LeRobotDataset.resume(self.repo_id, root=self.root, **writer_args)
        except BaseException:
            os.close(self._lock)
            raise
        if (info.data_files_size_in_mb, info.video_files_size_in_mb) != (ROLL_EVERY_EPISODE_MB,) * 2:
            dataset.meta.update_chunk_settings(data_files_size_in_mb=ROLL_EVERY_EPISODE_MB,
                                               video_files_size_in_mb=ROLL_EVERY_EPISODE_MB)
        return dataset

    @property
    def num_episodes(self) -> int:
        """Episodes saved in the dataset (including those from earlier runs)."""
        return self.dataset.meta.total_episodes

    @property
    def frames_in_episode(self) -> int:
        return self._frames

    def add_frame(self, obs: dict, action: np.ndarray, phase: str | None = None) -> None:
        """Buffer one step: ``obs`` (keys of vla.features, one frame, no batch axis), the
        (D_a,) action taken from it, and the expert's phase label ("" when None).

        An invalid frame (NaN/inf in a float feature, missing key, wrong shape) discards the
        whole episode being recorded and raises ValueError naming the key.
        """
        try:
            frame = self._frame(obs, action, phase)
            task = frame["task"]  # lerobot pops it from the frame
            # lerobot appends a frame key by key (and feeds the video encoders): a Ctrl-C in the
            # middle would leave an episode whose features disagree on its length.
            with sigint_deferred(), without_realtime_threads():  # see vla/scheduling.py
                self.dataset.add_frame(frame)
                self._episode_tasks.add(task)
                self._frames += 1
        except ValueError as e:
            self.discard_episode()
            raise ValueError(f"{e} (the episode being recorded was discarded)") from None

    def _frame(self, obs: dict, action: np.ndarray, phase: str | None) -> dict:
        frame = {}
        for key, feature in self.features.items():
            if key == PHASE:
                frame[key] = phase or ""
                continue
            if key != ACTION and key not in obs:
                raise ValueError(f"observation has no {key!r} (it has {sorted(obs)})")
            value = np.asarray(action if key == ACTION else obs[key])
            if feature["dtype"] == "float32":
                value = value.astype(np.float32, copy=False)
                if not np.isfinite(value).all():
                    raise ValueError(f"non-finite value in {key!r} at frame {self._frames}: {value}")
            frame[key] = value
        task = obs.get(TASK, self.task)
        if not task:
            raise ValueError(f"no instruction: the observation has no {TASK!r} and the recorder no default task")
        frame["task"] = str(task)
        return frame

    def save_episode(self) -> int:
        """Write the buffered episode durably; returns its episode index."""
        if self._frames == 0:
            raise ValueError("no frames to save: call add_frame first")
        index = self.dataset.meta.total_episodes
        self._register_tasks()
        with SuppressProgressBars(), without_realtime_threads():
            self.dataset.save_episode()
        # Commit: footers on the episode's data file, then on its metadata file (lerobot 0.6.1
        # has no public call that closes them without ending the recording session).
        self.dataset.writer.close_writer()
        self.dataset.meta._close_writer()
        _snapshot_info(self.root)
        self._frames, self._episode_tasks = 0, set()
        return index

    def _register_tasks(self) -> None:
        """Add new instructions to meta/tasks.parquet atomically, before lerobot would rewrite
        it in place (it then finds nothing new to write)."""
        meta = self.dataset.meta
        new = [t for t in sorted(self._episode_tasks) if meta.tasks is None or t not in meta.tasks.index]
        if not new:
            return
        start = 0 if meta.tasks is None else len(meta.tasks)
        added = pd.DataFrame({"task_index": range(start, start + len(new))}, index=pd.Index(new, name="task"))
        tasks = added if meta.tasks is None else pd.concat([meta.tasks, added])
        _atomic_write(self.root / DEFAULT_TASKS_PATH, lambda tmp: tasks.to_parquet(tmp))
        meta.tasks = tasks

    def discard_episode(self) -> None:
        """Drop the frames buffered since the last save (nothing of them reaches the dataset)."""
        with without_realtime_threads():
            self.dataset.clear_episode_buffer()
        self._frames, self._episode_tasks = 0, set()

    def close(self) -> None:
        """Finalize the dataset and release the lock; unsaved frames are discarded."""
        if self.dataset is None:
            return
        try:
            if self._frames:
                logger.warning("%s: discarding %d unsaved frames", self.root, self._frames)
                self.discard_episode()
            with without_realtime_threads():
                self.dataset.finalize()
        finally:
            self.dataset = None
            os.close(self._lock)

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def repair_dataset(root: str | Path) -> list[str]:
    """Roll a dataset back to its last saved episode after an interrupted recording.

    Deletes the files of the unfinished save, restores meta/info.json from the recorder's
    copy if it was cut short, and recomputes the totals and stats.json from the committed
    episodes. Returns what was done (empty when nothing was needed). Takes the recorder lock,
    so it never runs while a recorder is writing.
    """
    root = Path(root)
    if not (root / INFO_FILE).exists() and not (root / SIDECAR).exists():
        raise DatasetError(f"no dataset to repair at {root}")
    lock = acquire_lock(root)
    try:
        return _repair(root)
    finally:
        os.close(lock)


def _repair(root: Path) -> list[str]:
    actions = []
    scan = scan_dataset(root)
    if scan.info is None:
        snapshot = root / SIDECAR / "info.json"
        if not snapshot.exists():
            raise DatasetError(f"{root / INFO_FILE} is unreadable and there is no recorder copy to restore it from")
        _atomic_write(root / INFO_FILE, lambda tmp: shutil.copyfile(snapshot, tmp))
        actions.append(f"restored {INFO_FILE} from {SIDECAR}/info.json")
        scan = scan_dataset(root)
    for path in scan.leftovers:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        actions.append(f"removed {path.relative_to(root)}")
    if scan.stale_totals or not scan.stats_ok:
        _rewrite_totals_and_stats(root, scan)
        actions.append(f"reset totals to {scan.num_episodes} episodes / {scan.num_frames} frames and recomputed stats")
    return actions


def _rewrite_totals_and_stats(root: Path, scan: DatasetScan) -> None:
    info = load_info(root)
    info.total_episodes, info.total_frames = scan.num_episodes, scan.num_frames
    info.total_tasks = len(load_tasks(root)) if (root / DEFAULT_TASKS_PATH).exists() else 0
    info.splits = {"train": f"0:{scan.num_episodes}"}
    _write_json_atomic(root / INFO_FILE, info.to_dict())
    if scan.num_episodes == 0:
        (root / STATS_FILE).unlink(missing_ok=True)
        return
    # Each committed episode row carries its own stats; aggregate them as lerobot does on save.
    per_episode = []
    for path in scan.episode_files:
        file = pq.ParquetFile(path)
        columns = [c for c in file.schema_arrow.names if c.startswith("stats/")]
        per_episode += [unflatten_dict({k.removeprefix("stats/"): np.asarray(v) for k, v in row.items()})
                        for row in file.read(columns=columns).to_pylist()]
    _write_json_atomic(root / STATS_FILE, serialize_dict(aggregate_stats(per_episode)))


def _check_same_features(root: Path, existing: dict, wanted: dict) -> None:
    """Raise DatasetError naming the first feature that differs (video encoder info aside)."""
    def describe(ft: dict | None) -> str:
        return "nothing" if ft is None else f"{ft['dtype']} {tuple(ft['shape'])} names={ft.get('names')}"

    existing = {k: v for k, v in existing.items() if k not in DEFAULT_FEATURES}
    for key in sorted(existing.keys() | wanted.keys()):
        have, want = existing.get(key), wanted.get(key)
        if describe(have) != describe(want):
            raise DatasetError(f"cannot append to {root}: feature {key!r} differs: the dataset has "
                               f"{describe(have)}, the recorder writes {describe(want)}")


@contextmanager
def sigint_deferred():
    """Hold a Ctrl-C that arrives inside the block until the block is done (main thread only;
    other threads never receive SIGINT), then raise it as Python would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def acquire_lock(root: Path) -> int:
    """An exclusive advisory lock on the dataset; the OS releases it when the process dies."""
    path = root / SIDECAR / "recorder.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetError(f"{root} is being written by another recorder (lock {path})") from None
    return fd


def check_unlocked(root: str | Path) -> None:
    """Refuse a dataset another recorder is writing, creating nothing: `vla collect` asks before it
    builds a simulator (which takes a minute) rather than when the recorder opens the dataset."""
    path = Path(root) / SIDECAR / "recorder.lock"
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DatasetError(f"{root} is being written by another recorder (lock {path})") from None
    finally:
        os.close(fd)  # also releases the lock just taken


def _snapshot_info(root: Path) -> None:
    _atomic_write(root / SIDECAR / "info.json", lambda tmp: shutil.copyfile(root / INFO_FILE, tmp))


def _write_json_atomic(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=4, ensure_ascii=False)))


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
