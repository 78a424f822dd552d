"""The hardware-free robot driver interface every backend implements.

A `Robot` speaks the feature convention of `vla.features`, so a checkpoint trained in the
tabletop tasks runs on any backend without glue:

    observation.state          float32 (11,)  eef_pos (3) | eef_rot6d (6) | gripper_qpos (2), policy frame
    observation.images.<cam>  uint8 (S, S, 3)  RGB, S = config.image_size
    task                      str
    action                    float32 (7,)  eef_delta: dpos (3) | daxis-angle (3) | gripper (1), in [-1, 1]
                                        or (8,) joint_position: q (7, rad) | gripper (1)

A backend implements four primitives on physical quantities (`RobotState` in, `Command` out);
this base class owns the conversions between those and policy features, in one place:

    _connect() / _disconnect()
    _read() -> RobotState            the latest measured state, with the time it was measured
    _send(command: Command)           stream one target to the arm's controller
    _hold()                           command the arm to stay where it is

Nothing here imports torch or a middleware; backends import their middleware lazily.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot.config import RobotConfig
from vla.errors import NotYet, RobotError
from vla.features import ACTION, ACTION_NAMES, OBS_STATE, STATE_NAMES, TASK, image_key, rot6d


@dataclass
class RobotState:
    """What a backend measured, in the policy frame (see `envs.robot.config`)."""

    stamp: float                          # time.monotonic() when the oldest part was received
    joint_pos: np.ndarray                 # (7,) rad
    eef_pos: np.ndarray                   # (3,) m
    eef_rot: np.ndarray                   # (3, 3)
    gripper_width: float                  # m, distance between the fingers
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (H, W, 3) uint8 RGB
    # Each finger's opening (m, >= 0) where the robot reports them separately; else half the width.
    fingers: np.ndarray | None = None

    def __post_init__(self):
        if self.fingers is None:
            self.fingers = np.array([self.gripper_width / 2, self.gripper_width / 2])

    @property
    def age(self) -> float:
        return time.monotonic() - self.stamp


@dataclass
class Command:
    """One target for the arm, in the policy frame. Exactly one of pose / joints is set."""

    gripper_width: float                  # m
    eef_pos: np.ndarray | None = None     # (3,)
    eef_rot: np.ndarray | None = None     # (3, 3)
    joint_pos: np.ndarray | None = None   # (7,)


def square_image(image: np.ndarray, size: int) -> np.ndarray:
    """A camera frame resized to the policy's (size, size); unchanged if it already is."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def pose_delta(target_pos, target_rot, pos, rot, translation_scale: float, rotation_scale: float) -> np.ndarray:
    """The OSC_POSE delta action (6,) from pose (pos, rot) to the target: position difference and
    left-multiplied axis-angle (robosuite's convention, base frame), in action units."""
    drot = Rotation.from_matrix(np.asarray(target_rot) @ np.asarray(rot).T).as_rotvec()
    return np.concatenate([(np.asarray(target_pos) - pos) / translation_scale, drot / rotation_scale])


def robosuite_gripper(width: float, open_width: float) -> float:
    """A gripper width (m) as robosuite's gripper action: -1 fully open .. +1 closed."""
    return float(np.clip(1.0 - 2.0 * width / open_width, -1.0, 1.0))


class Robot(ABC):
    """Base class: feature conversion, connection lifecycle, context manager."""

    def __init__(self, config: RobotConfig):
        config.check()
        self.config = config
        self._connected = False
        self._last_state: RobotState | None = None
        self.last_gripper_width: float | None = None  # last commanded width; holds keep it
        self._ee_offset = Rotation.from_rotvec(config.ee_rotation_offset).as_matrix()

    # --- features (readable while disconnected) ----------------------------------------------
    @property
    def observation_features(self) -> dict[str, dict]:
        s = self.config.image_size
        feats = {image_key(c): {"dtype": "video", "shape": (s, s, 3), "names": ["height", "width", "channels"]}
                 for c in self.config.cameras}
        feats[OBS_STATE] = {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)}
        return feats

    @property
    def action_features(self) -> dict[str, dict]:
        if self.config.action_space == "eef_delta":
            names = list(ACTION_NAMES)
        else:
            names = [f"q{i}" for i in range(1, 8)] + ["gripper"]
        return {ACTION: {"dtype": "float32", "shape": (len(names),), "names": names}}

    @property
    def action_dim(self) -> int:
        return self.action_features[ACTION]["shape"][0]

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        """Open the link and wait (up to config.connect_timeout) for a complete observation."""
        if self._connected:
            return
        self._connect()
        self._connected = True
        deadline = time.monotonic() + self.config.connect_timeout
        try:
            while True:
                try:
                    self._last_state = self._read()
                    self.last_gripper_width = self._last_state.gripper_width
                    return
                except NotYet as e:
                    if time.monotonic() > deadline:
                        raise RobotError(f"{type(self).__name__}: no complete observation within "
                                         f"{self.config.connect_timeout} s of connecting ({e})") from None
                    time.sleep(0.01)
        except BaseException:
            self.disconnect()  # no half-open link: threads and sockets go with the failure
            raise

    def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            self._disconnect()

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    # --- the interface ------------------------------------------------------------------------
    def read_state(self) -> RobotState:
        """The latest measured state (physical units); raises LinkLost if the link is gone."""
        self._require_connected()
        self._last_state = self._read()
        return self._last_state

    def get_observation(self) -> dict:
        """The policy observation (see the module docstring), from the latest measured state."""
        return self.observation_from(self.read_state())

    def observation_from(self, state: RobotState) -> dict:
        obs = {image_key(c): state.images[c] for c in self.config.cameras}
        qpos = np.array([state.fingers[0], -state.fingers[1]])  # robosuite's finger sign convention
        obs[OBS_STATE] = np.concatenate([state.eef_pos, rot6d(state.eef_rot), qpos]).astype(np.float32)
        obs[TASK] = self.instruction
        return obs

    @property
    def instruction(self) -> str:
        """The language instruction: config.task, else the tabletop task sim_task's."""
        if self.config.task:
            return self.config.task
        from envs.tabletop.tasks import task_spec

        return task_spec(self.config.sim_task).instruction

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command one policy action; returns the action actually sent (after any change)."""
        self._require_connected()
        state = self._last_state if self._last_state is not None else self.read_state()
        command = self.command_from(np.asarray(action, dtype=np.float64), state)
        self.send_command(command)
        return self.action_from(command, state)

    def send_command(self, command: Command) -> None:
        """Stream one physical target to the arm (no checks: `SafeRobot` is the checked path)."""
        self._require_connected()
        self._send(command)
        self.last_gripper_width = command.gripper_width

    def hold(self) -> None:
        """Command the arm to stay where it is, the gripper at its last commanded width."""
        if self._connected:
            self._hold()

    def task_success(self) -> bool | None:
        """Whether the task succeeded, where something measures it (a simulator); else None."""
        return None

    def reset_episode(self, seed: int) -> bool:
        """Start a new episode where the backend can (a simulator); False on a real arm."""
        return False

    # --- conversions ----------------------------------------------------------------------------
    def command_from(self, action: np.ndarray, state: RobotState) -> Command:
        """A policy action -> a physical target relative to `state`."""
        cfg = self.config
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},) for action_space={cfg.action_space}, "
                             f"got {action.shape}")
        width = self.gripper_width_for(action[-1], state.gripper_width)
        if cfg.action_space == "joint_position":
            return Command(gripper_width=width, joint_pos=action[:7].copy())
        # robosuite's OSC_POSE delta convention: position added, rotation left-multiplied (base frame)
        pos = state.eef_pos + cfg.translation_scale * action[:3]
        rot = Rotation.from_rotvec(cfg.rotation_scale * action[3:6]).as_matrix() @ state.eef_rot
        return Command(gripper_width=width, eef_pos=pos, eef_rot=rot)

    def action_from(self, command: Command, state: RobotState) -> np.ndarray:
        """The policy action that `command` corresponds to, relative to `state` (for logs and datasets)."""
        cfg = self.config
        grip = 1.0 if command.gripper_width < 0.5 * cfg.gripper_open_width else -1.0
        if command.joint_pos is not None:
            return np.concatenate([command.joint_pos, [grip]]).astype(np.float32)
        delta = pose_delta(command.eef_pos, command.eef_rot, state.eef_pos, state.eef_rot,
                           cfg.translation_scale, cfg.rotation_scale)
        return np.concatenate([delta, [grip]]).astype(np.float32)

    def hold_command(self, state: RobotState) -> Command:
        """Stay at the measured state, the gripper at its last commanded width."""
        width = self.last_gripper_width if self.last_gripper_width is not None else state.gripper_width
        if self.config.action_space == "joint_position":
            return Command(gripper_width=width, joint_pos=state.joint_pos.copy())
        return Command(gripper_width=width, eef_pos=state.eef_pos.copy(), eef_rot=state.eef_rot.copy())

    def gripper_width_for(self, value: float, current: float) -> float:
        """Binary gripper with a dead band: above +threshold close, below -threshold open, else keep."""
        t = self.config.gripper_threshold
        if value > t:
            return 0.0
        if value < -t:
            return self.config.gripper_open_width
        return current

    def to_policy_frame(self, pos_in_base: np.ndarray, rot_in_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A TCP pose measured in the robot's base frame -> the policy frame."""
        return (np.asarray(pos_in_base) + np.asarray(self.config.base_position),
                np.asarray(rot_in_base) @ self._ee_offset)

    def to_base_frame(self, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `to_policy_frame`: a target in the policy frame -> the robot's base frame."""
        return np.asarray(pos) - np.asarray(self.config.base_position), np.asarray(rot) @ self._ee_offset.T

    def _require_connected(self) -> None:
        if not self._connected:
            raise RobotError(f"{type(self).__name__} is not connected; call connect() first")

    # --- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _read(self) -> RobotState:
        """The latest state; raise `NotYet` while some stream has not arrived, LinkLost if the link is gone."""

    @abstractmethod
    def _send(self, command: Command) -> None: ...

    @abstractmethod
    def _hold(self) -> None: ...



