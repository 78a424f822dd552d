"""robomimic / robosuite HDF5 demonstrations -> a LeRobot v3.0 dataset (``vla convert``).

    stats = convert_hdf5(ConvertConfig(input="lift/ph/image.hdf5"), root="data/lift_rm", repo_id="local/lift_rm")

Two layouts are read:

- robomimic: ``data`` with attr ``env_args`` (JSON: env_name, type, env_kwargs), one group per demo
  (``data/demo_N``) with ``actions`` (T, A), ``states`` (T, S), ``obs/`` (``agentview_image``
  (T, H, W, 3) uint8, ``robot0_eef_pos``, ``robot0_eef_quat`` (x, y, z, w), ``robot0_gripper_qpos``,
  ``object``, ...) and the attrs ``model_file`` (scene XML) and, for RoboCasa / MimicGen,
  ``ep_meta`` (JSON with the instruction in ``lang``); an optional ``mask/<filter key>`` lists demos.
- robosuite (``collect_human_demonstrations.py``): ``data`` with attrs ``env`` and ``env_info``
  (JSON of the robosuite.make kwargs), per demo ``model_file``, ``states`` and ``actions`` only.

Frames come from the file's ``obs/`` when it has every key needed; otherwise (no observations,
a camera the file lacks, or ``render=True``) every frame is re-rendered by replaying ``states`` in
the robosuite env the file describes (`vla.data.replay`). Step t's observation is that of
``states[t]``, the state ``actions[t]`` was taken from, in both layouts.

Per frame, as vla's robosuite envs (`envs.robosuite_tasks.env`) observe it, so a policy trained
on the result runs there unchanged: ``observation.state`` = robot0_eef_pos (3) | rot6d of
robot0_eef_quat (6; the hand body's orientation, which robomimic datasets store) |
robot0_gripper_qpos (G); ``observation.environment_state`` = ``object`` (robosuite's
object-state) when present; ``observation.images.<camera>`` upright RGB at ``image_size``
(robomimic stores images upright: its EnvRobosuite.get_observation reverses the rows of
robosuite's OpenGL frames); ``action`` as stored; ``task`` = ep_meta's ``lang``, else
``ConvertConfig.instruction``, else vla's instruction for the env name.

The dataset is written into a temporary sibling of ``root`` and renamed into place at the end,
so a failed or interrupted conversion leaves no partial dataset (appending to an existing
dataset works on a copy, swapped in at the end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import h5py
import numpy as np
from gymnasium import spaces
from tqdm import tqdm

from envs.robosuite_tasks.env import robosuite_state
from envs.robosuite_tasks.tasks import instruction_for, robosuite_camera, vla_camera
from vla.data.recorder import EpisodeRecorder, acquire_lock, features_from_space
from vla.data.source import INFO_FILE
from vla.errors import DatasetError
from vla.features import OBS_ENV_STATE, OBS_STATE, TASK, image_key

EEF_POS, EEF_QUAT = "robot0_eef_pos", "robot0_eef_quat"
GRIPPER_QPOS, OBJECT = "robot0_gripper_qpos", "object"
IMAGE_SUFFIX = "_image"
DEFAULT_CAMERAS = ["agentview", "wrist"]  # re-rendered when the file has no images and none are asked for
DEFAULT_FPS = 20
PROVENANCE = Path("meta/vla_convert.json")  # which file / demo each episode came from


@dataclass
class Demo:
    name: str
    group: h5py.Group
    length: int
    task: str


@dataclass
class ConvertStats:
    episodes: int
    frames: int
    root: Path
    cameras: list[str]
    rendered: bool
    seconds: float


def convert_hdf5(cfg, root: str | Path, repo_id: str | None = None, *, progress: bool = True) -> ConvertStats:
    """Convert ``cfg.input`` (a `vla.config.ConvertConfig`) into the dataset at ``root``.

    Creates the dataset, or appends to one with the same features and fps. Problems with the
    file or the destination raise `DatasetError` (one line) and leave ``root`` as it was.
    """
    _check_settings(cfg)
    start = time.monotonic()
    root = Path(root).expanduser()
    with _open_hdf5(cfg.input) as file:
        source = Source(file, cfg)
        replayer = source.make_replayer()
        try:
            features = source.features(replayer)
            with _staged(root) as stage:
                frames, first = _record(source, replayer, features, stage, root, repo_id, progress)
                _write_provenance(stage, source, first)
        finally:
            if replayer is not None:
                replayer.close()
    return ConvertStats(len(source.demos), frames, root, source.cameras, source.render, time.monotonic() - start)


def _check_settings(cfg) -> None:
    from vla.errors import ConfigError

    if not cfg.input:
        raise ConfigError("convert.input is required: the robomimic / robosuite HDF5 file to convert")
    for key in ("image_size", "fps", "max_episodes"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"convert.{key} must be >= 1, got {value}")


@contextmanager
def _open_hdf5(path: str):
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file ({' '.join(str(e).split())})") from None
    with file:
        yield file


class Source:
    """What to read from one HDF5 file: demos, cameras, keys, instructions; all checked up front,
    so a bad file fails before anything is rendered or written."""

    def __init__(self, file: h5py.File, cfg):
        self.file, self.cfg = file, cfg
        self.path = Path(file.filename)
        if not isinstance(file.get("data"), h5py.Group):
            raise DatasetError(f"{self.path} has no 'data' group: not a robomimic / robosuite demo file")
        self.data = file["data"]
        self.layout, self.env_name, self.env_kwargs = self._env_meta()
        self.demos = self._demos()
        first = self.demos[0].group
        self.file_cameras = sorted(vla_camera(k[: -len(IMAGE_SUFFIX)]) for k, v in first.get("obs", {}).items()
                                   if k.endswith(IMAGE_SUFFIX) and v.ndim == 4)
        cameras = cfg.cameras if cfg.cameras is not None else (self.file_cameras or DEFAULT_CAMERAS)
        self.cameras = list(dict.fromkeys(vla_camera(c) for c in cameras))  # robot0_eye_in_hand -> wrist
        lacking = [c for c in self.cameras if c not in self.file_cameras]
        self.render = bool(cfg.render) or "obs" not in first or bool(lacking)
        self.why_render = (f"to render camera(s) {lacking} (the file has {self.file_cameras})" if lacking else
                           "because convert.render=true" if cfg.render else "because the file has no observations")
        # Optional keys, present in every demo when in the first: object state, gripper joints.
        self.optional = [k for k in (GRIPPER_QPOS, OBJECT) if not self.render and k in first["obs"]]
        self._validate()

    def _env_meta(self) -> tuple[str, str | None, dict]:
        attrs = self.data.attrs
        if "env_args" in attrs:
            meta = self._json_attr(attrs, "env_args")
            return "robomimic", meta.get("env_name"), dict(meta.get("env_kwargs") or {})
        if "env" in attrs:
            kwargs = self._json_attr(attrs, "env_info") if "env_info" in attrs else {}
            return "robosuite", _text(attrs["env"]), kwargs
        return "unknown", None, {}

    def _json_attr(self, attrs, key: str) -> dict:
        try:
            value = json.loads(_text(attrs[key]))
        except ValueError as e:
            raise DatasetError(f"{self.path}: data attr {key!r} is not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{self.path}: data attr {key!r} is not a JSON object")
        return value

    def _demos(self) -> list[Demo]:
        key = self.cfg.filter_key
        if key:
            masks = self.file.get("mask")
            if masks is None or key not in masks:
                have = sorted(masks) if masks is not None else []
                raise DatasetError(f"{self.path} has no filter key {key!r} (mask/ has {have or 'nothing'})")
            names = [_text(n) for n in masks[key][()]]
        else:
            names = [n for n, g in self.data.items() if isinstance(g, h5py.Group)]
        names = sorted(dict.fromkeys(names), key=_natural)[: self.cfg.max_episodes]
        if not names:
            raise DatasetError(f"{self.path} has no demos under data/" + (f" in filter key {key!r}" if key else ""))
        demos = []
        for name in names:
            group = self.data.get(name)
            if not isinstance(group, h5py.Group):
                raise DatasetError(f"{self.path}: filter key {key!r} lists {name!r}, which is not in data/")
            actions = self._require(group, "actions")
            if actions.ndim != 2 or actions.shape[0] == 0:
                raise DatasetError(f"{self.path}: data/{name}/actions has shape {actions.shape}, "
                                   "expected (T, A) with T >= 1")
            demos.append(Demo(name, group, actions.shape[0], self._instruction(name, group)))
        return demos

    def _instruction(self, name: str, group: h5py.Group) -> str:
        if "ep_meta" in group.attrs:
            try:
                lang = json.loads(_text(group.attrs["ep_meta"])).get("lang")
            except (ValueError, AttributeError):
                lang = None
            if isinstance(lang, str) and lang.strip():
                return lang.strip()
        task = self.cfg.instruction or instruction_for(self.env_name or "")
        if not task:
            raise DatasetError(f"no instruction for {name!r}: the file has no ep_meta 'lang' and vla knows no "
                               f"instruction for env {self.env_name!r}; set convert.instruction=\"...\"")
        return task

    def _require(self, group: h5py.Group, key: str, length: int | None = None) -> h5py.Dataset:
        item = group.get(key)
        if not isinstance(item, h5py.Dataset):
            hint = f", needed {self.why_render}" if key == "states" else ""
            raise DatasetError(f"{self.path}: data/{_base(group)} has no {key!r}{hint}")
        if length is not None and item.shape[0] != length:
            raise DatasetError(f"{self.path}: data/{_base(group)}/{key} has {item.shape[0]} steps, "
                               f"the actions {length}")
        return item

    def _validate(self) -> None:
        action_dim = self.demos[0].group["actions"].shape[1]
        for demo in self.demos:
            actions = demo.group["actions"][()]
            if actions.shape[1] != action_dim:
                raise DatasetError(f"{self.path}: data/{demo.name}/actions has {actions.shape[1]} dims, "
                                   f"data/{self.demos[0].name} has {action_dim}")
            bad = np.argwhere(~np.isfinite(actions))
            if len(bad):
                step = int(bad[0][0])
                raise DatasetError(f"{self.path}: data/{demo.name}/actions has a non-finite value at step {step}: "
                                   f"{actions[step].tolist()}")
            if self.render:
                self._require(demo.group, "states", demo.length)
                continue
            keys = [EEF_POS, EEF_QUAT, *self.optional] + [robosuite_camera(c) + IMAGE_SUFFIX for c in self.cameras]
            for key in keys:
                item = self._require(demo.group, f"obs/{key}", demo.length)
                if key.endswith(IMAGE_SUFFIX) and (item.dtype != np.uint8 or item.ndim != 4 or item.shape[3] != 3):
                    raise DatasetError(f"{self.path}: data/{demo.name}/obs/{key} is {item.dtype} {item.shape}, "
                                       "expected uint8 (T, H, W, 3) RGB images")

    def make_replayer(self):
        """The robosuite env that re-renders the demos; None when the file's frames are used."""
        if not self.render:
            return None
        from vla.data.replay import Replayer  # imports robosuite

        if not self.env_name:
            raise DatasetError(f"{self.path} names no env (no data attr 'env_args' or 'env'): cannot replay its "
                               f"states {self.why_render}")
        return Replayer(self.env_name, self.env_kwargs, self.cameras, self.cfg.image_size)

    def features(self, replayer) -> dict:
        first = self.demos[0].group
        if self.render:
            self._load_scene(self.demos[0], replayer)
            probe = replayer.observe(first["states"][0])
            state_dim = len(probe[OBS_STATE])
            env_dim = len(probe[OBS_ENV_STATE]) if OBS_ENV_STATE in probe else 0
        else:
            state_dim = 9 + (first["obs"][GRIPPER_QPOS].shape[1] if GRIPPER_QPOS in self.optional else 0)
            env_dim = first["obs"][OBJECT].shape[1] if OBJECT in self.optional else 0
        size = self.cfg.image_size
        obs = {image_key(c): spaces.Box(0, 255, (size, size, 3), np.uint8) for c in self.cameras}
        obs[OBS_STATE] = spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
        if env_dim:
            obs[OBS_ENV_STATE] = spaces.Box(-np.inf, np.inf, (env_dim,), np.float32)
        action = spaces.Box(-np.inf, np.inf, (first["actions"].shape[1],), np.float32)
        features = features_from_space(spaces.Dict(obs), action)
        if env_dim:
            features[OBS_ENV_STATE]["names"] = None  # robosuite's object state, not the tabletop layout
        return features

    @property
    def fps(self) -> int:
        return self.cfg.fps or int(self.env_kwargs.get("control_freq") or DEFAULT_FPS)

    @property
    def robot_type(self) -> str | None:
        robots = self.env_kwargs.get("robots")
        robots = [robots] if isinstance(robots, str) else robots
        return str(robots[0]).lower() if robots else None

    def frames(self, demo: Demo, replayer):
        """The demo's observations, one dict per step (vla.features keys, ``task`` included)."""
        if self.render:
            states = self._load_scene(demo, replayer)
            for state in states:
                yield {**replayer.observe(state), TASK: demo.task}
            return
        obs = demo.group["obs"]
        keys = [EEF_POS, EEF_QUAT] + ([GRIPPER_QPOS] if GRIPPER_QPOS in self.optional else [])
        state = robosuite_state({k: obs[k][()] for k in keys})
        env_state = obs[OBJECT][()] if OBJECT in self.optional else None
        images = {c: obs[robosuite_camera(c) + IMAGE_SUFFIX][()] for c in self.cameras}  # whole: chunked reads
        for t in range(demo.length):
            frame = {OBS_STATE: state[t], TASK: demo.task}
            if env_state is not None:
                frame[OBS_ENV_STATE] = env_state[t]
            for camera, frames in images.items():
                frame[image_key(camera)] = resize(frames[t], self.cfg.image_size)
            yield frame

    def _load_scene(self, demo: Demo, replayer) -> np.ndarray:
        """Load the demo's scene into the replay env; returns its states (T, S)."""
        states = demo.group["states"][()]
        model = _text(demo.group.attrs["model_file"]) if "model_file" in demo.group.attrs else None
        replayer.load_scene(model, f"data/{demo.name}", states.shape[-1])
        return states


def _record(source: Source, replayer, features: dict, stage: Path, root: Path, repo_id: str | None,
            progress: bool) -> tuple[int, int]:
    """Write every demo as one episode into ``stage``; returns (frames written, first episode index)."""
    try:
        recorder = EpisodeRecorder(stage, features, fps=source.fps, robot_type=source.robot_type,
                                   repo_id=repo_id or f"local/{root.name}")
    except DatasetError as e:
        raise DatasetError(str(e).replace(str(stage), str(root))) from None
    frames = 0
    with recorder, tqdm(source.demos, desc="converting", unit="demo", disable=not progress) as bar:
        first = recorder.num_episodes
        for demo in bar:
            actions = demo.group["actions"][()]
            for t, frame in enumerate(source.frames(demo, replayer)):
                try:
                    recorder.add_frame(frame, actions[t])
                except ValueError as e:
                    message = " ".join(str(e).split())
                    raise DatasetError(f"{source.path}: data/{demo.name} step {t}: {message}") from None
            recorder.save_episode()
            frames += demo.length
            bar.set_postfix(frames=frames)
    return frames, first


def _write_provenance(stage: Path, source: Source, first: int) -> None:
    path = stage / PROVENANCE
    record = json.loads(path.read_text()) if path.exists() else {"conversions": []}
    record["conversions"].append({
        "source": str(source.path.resolve()),
        "layout": source.layout,
        "env_name": source.env_name,
        "filter_key": source.cfg.filter_key,
        "images": "rendered from states" if source.render else "from the file",
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "episodes": {str(first + i): demo.name for i, demo in enumerate(source.demos)},
    })
    path.write_text(json.dumps(record, indent=2))


@contextmanager
def _staged(root: Path):
    """Yield a temporary sibling directory that replaces ``root`` when the block succeeds; on any
    error it is deleted and ``root`` is untouched. An existing dataset is copied there first (and
    locked meanwhile, as a recorder would), so appending is all-or-nothing too."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"dataset.root {root} exists and is not a directory")
    existing = (root / INFO_FILE).exists()
    if root.is_dir() and not existing and any(root.iterdir()):
        raise DatasetError(f"dataset.root {root} exists and is not a LeRobot dataset (no {INFO_FILE}); choose another")
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = root.parent / f".{root.name}.converting-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    lock = acquire_lock(root) if existing else None
    try:
        if existing:
            shutil.copytree(root, stage)
        yield stage
        if existing:
            replaced = root.parent / f".{root.name}.replaced-{os.getpid()}"
            os.rename(root, replaced)
            os.rename(stage, root)
            shutil.rmtree(replaced)
        else:
            if root.is_dir():
                root.rmdir()  # empty
            os.rename(stage, root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): area averaging when shrinking, bilinear when enlarging."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _base(group: h5py.Group) -> str:
    return group.name.rsplit("/", 1)[-1]


def _natural(name: str):
    """demo_2 before demo_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
