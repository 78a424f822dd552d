"""What the ros2 and rosbridge backends share: `TopicRobot`, the latest-message store, decoding.

Both backends speak the same franka_ros2-style topics (`RobotConfig.topics`) and differ only in
how a message travels (rclpy over DDS, or JSON over a rosbridge websocket). `TopicRobot` holds
everything above the transport: middleware callbacks feed `StreamStore` with numpy values and
the control loop reads a consistent snapshot; commands become pose / trajectory / gripper
messages through four small publish methods a backend implements. Each stream remembers when
it last arrived (time.monotonic()), and a snapshot's stamp is that of its oldest stream, so a
camera that stops publishing makes the whole observation stale.
"""

from __future__ import annotations

import math
import threading
import time
from abc import abstractmethod

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot.base import Command, Robot, RobotState, square_image
from envs.robot.config import RobotConfig
from vla.errors import LinkLost, NotYet, RobotError

# sensor_msgs/Image encodings we decode (what ROS camera drivers publish for colour).
_CHANNEL_ORDER = {"rgb8": (0, 1, 2), "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0)}


def decode_image(encoding: str, height: int, width: int, step: int, data: bytes | memoryview) -> np.ndarray:
    """sensor_msgs/Image fields -> (H, W, 3) uint8 RGB."""
    if encoding not in _CHANNEL_ORDER:
        raise ValueError(f"unsupported image encoding {encoding!r}; publish one of {sorted(_CHANNEL_ORDER)}")
    channels = 4 if encoding.endswith("a8") else 3
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)
    image = rows[:, : width * channels].reshape(height, width, channels)
    return np.ascontiguousarray(image[..., list(_CHANNEL_ORDER[encoding])])


def pose_to_matrix(position: tuple[float, float, float], quat_xyzw: tuple[float, float, float, float]):
    return np.asarray(position, dtype=np.float64), Rotation.from_quat(quat_xyzw).as_matrix()


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """(3, 3) -> (x, y, z, w), geometry_msgs' order."""
    return Rotation.from_matrix(rot).as_quat()


class StreamStore:
    """Thread-safe latest values of the robot's topics, assembled into a `RobotState`."""

    def __init__(self, config: RobotConfig):
        self.config = config
        self._lock = threading.Lock()
        self._joints: tuple[float, np.ndarray, np.ndarray] | None = None   # stamp, arm q (7,), fingers (2,)
        self._pose: tuple[float, np.ndarray, np.ndarray] | None = None  # stamp, pos, rot (base frame)
        self._images: dict[str, tuple[float, np.ndarray]] = {}
        self.messages = 0
        self._arrived = threading.Condition(self._lock)
        self._stamps: dict[str, float] = {}  # header stamp (s, the sender's clock) of each stream's latest message

    def _arrived_at(self, stream: str, stamp: float | None) -> None:
        """Under the lock: a message on ``stream`` stamped ``stamp``; wakes `wait_for_stamps`."""
        self._stamps[stream] = -math.inf if stamp is None else stamp
        self.messages += 1
        self._arrived.notify_all()

    def wait_for_stamps(self, since: float, timeout: float) -> bool:
        """Wait until every stream of a complete state has a message stamped at or after ``since``
        (the sender's clock); False after ``timeout`` s."""
        streams = ["joints", "pose", *self.config.cameras]
        with self._lock:
            return self._arrived.wait_for(lambda: all(self._stamps.get(s, -math.inf) >= since for s in streams),
                                          timeout)

    def put_joint_state(self, names: list[str], positions, stamp: float | None = None) -> None:
        index = {n: i for i, n in enumerate(names)}
        topics = self.config.topics
        if not all(n in index for n in topics.arm_joints):
            return  # a JointState from another publisher (e.g. only the gripper's): ignore it
        q = np.array([positions[index[n]] for n in topics.arm_joints], dtype=np.float64)
        fingers = [abs(positions[index[n]]) for n in topics.finger_joints if n in index]
        with self._lock:
            if len(fingers) == 2:
                fingers = np.array(fingers)
            else:  # the gripper publishes its own JointState: keep its last reading
                fingers = self._joints[2] if self._joints else np.zeros(2)
            self._joints = (time.monotonic(), q, fingers)
            self._arrived_at("joints", stamp)

    def put_pose(self, position, quat_xyzw, stamp: float | None = None) -> None:
        pos, rot = pose_to_matrix(position, quat_xyzw)
        with self._lock:
            self._pose = (time.monotonic(), pos, rot)
            self._arrived_at("pose", stamp)

    def put_image(self, camera: str, image: np.ndarray, stamp: float | None = None) -> None:
        image = square_image(image, self.config.image_size)
        with self._lock:
            self._images[camera] = (time.monotonic(), image)
            self._arrived_at(camera, stamp)

    def snapshot(self, to_policy_frame) -> RobotState:
        """The latest complete state; NotYet names the streams that have not arrived."""
        with self._lock:
            missing = [self.config.topics.joint_states] if self._joints is None else []
            if self._pose is None:
                missing.append(self.config.topics.ee_pose)
            missing += [self.config.topics.cameras.get(c, c) for c in self.config.cameras if c not in self._images]
            if missing:
                raise NotYet(f"waiting for {', '.join(missing)}")
            stamps = [self._joints[0], self._pose[0]] + [self._images[c][0] for c in self.config.cameras]
            _, q, fingers = self._joints
            _, pos, rot = self._pose
            images = {c: self._images[c][1] for c in self.config.cameras}
        eef_pos, eef_rot = to_policy_frame(pos, rot)
        return RobotState(min(stamps), q.copy(), eef_pos, eef_rot, float(fingers.sum()), images, fingers=fingers.copy())


def camera_topics(config: RobotConfig) -> dict[str, str]:
    """Policy camera -> topic; every configured camera needs a topic."""
    missing = [c for c in config.cameras if c not in config.topics.cameras]
    if missing:
        raise ValueError(f"robot.topics.cameras has no topic for camera(s) {missing}; "
                         f"add e.g. robot.topics.cameras.{missing[0]}=/camera/{missing[0]}/image_raw")
    return {c: config.topics.cameras[c] for c in config.cameras}


class TopicRobot(Robot):
    """A robot behind franka_ros2-style topics; subclasses provide the transport.

    Subclasses implement `_connect` / `_disconnect`, call ``self.store.put_*`` and
    `_on_success` / `_on_episode` from their callbacks, and publish with:

        _publish_pose(pos (3,), quat_xyzw (4,))     base frame, on topics.pose_command
        _publish_trajectory(q (7,), seconds)        one point, on topics.joint_trajectory_command
        _publish_gripper(width)                     on topics.gripper_command
        _publish_reset(seed)                        on topics.reset
        _link_alive() -> bool
    """

    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self.cameras = camera_topics(config)
        self.store = StreamStore(config)
        self._last_gripper_sent: tuple[float, float] | None = None  # width, when
        self._success: bool | None = None
        self._episode: int | None = None

    # --- callbacks ---------------------------------------------------------------------------
    def _on_success(self, value: bool) -> None:
        self._success = bool(value)

    def _on_episode(self, seed: int) -> None:
        self._episode = int(seed)

    # --- primitives ---------------------------------------------------------------------------
    def _read(self) -> RobotState:
        if not self._link_alive():
            raise LinkLost(f"{type(self).__name__}: the link is down")
        return self.store.snapshot(self.to_policy_frame)

    def _send(self, command: Command) -> None:
        if self.config.lockstep:
            self._send_lockstep(command, wait=True)
            return
        self._publish_arm(command)
        # The gripper on change, and again every second: a relay that turns widths into gripper
        # actions acts on changes, and a repeat covers a message lost before the subscriber matched.
        now, width = time.monotonic(), command.gripper_width
        last = self._last_gripper_sent
        if last is None or abs(width - last[0]) >= 1e-3 or now - last[1] >= 1.0:
            self._publish_gripper(width)
            self._last_gripper_sent = (width, now)

    def _hold(self) -> None:
        command = self.hold_command(self.store.snapshot(self.to_policy_frame))
        if self.config.lockstep:  # the watchdog holds too: it must not block on a cell that went quiet
            self._send_lockstep(command, wait=False)
            return
        self._publish_arm(command)

    def _send_lockstep(self, command: Command, wait: bool) -> None:
        """A lockstep cell steps once it has a gripper and an arm command, so both go every time; then
        (``wait``) the state that step produced is awaited (stamped after the command: the cell shares
        this machine's clock), so the next read sees it."""
        sent = time.time()
        self._publish_gripper(command.gripper_width)
        self._last_gripper_sent = (command.gripper_width, time.monotonic())
        self._publish_arm(command)
        if wait and not self.store.wait_for_stamps(sent, self.config.connect_timeout):
            raise RobotError(f"lockstep: no new state within {self.config.connect_timeout} s of a command "
                             "(is the cell running with robot.lockstep=true?)")

    def _publish_arm(self, command: Command) -> None:
        if command.joint_pos is not None:
            self._publish_trajectory(command.joint_pos, 1.0 / self.config.control_hz)
        else:
            pos, rot = self.to_base_frame(command.eef_pos, command.eef_rot)
            self._publish_pose(pos, matrix_to_quat(rot))

    # --- simulated cells ------------------------------------------------------------------------
    def task_success(self) -> bool | None:
        return self._success

    def reset_episode(self, seed: int) -> bool:
        """Ask the cell for a new episode on topics.reset; wait until topics.episode counts it."""
        t = self.config.topics
        if not (t.reset and t.episode):
            return False
        deadline = time.monotonic() + self.config.connect_timeout
        while self._episode is None:  # the cell's episode count, before asking
            if time.monotonic() > deadline:
                raise RobotError(f"nothing on {t.episode} within {self.config.connect_timeout} s")
            time.sleep(0.01)
        before, next_publish = self._episode, 0.0
        while self._episode <= before:  # re-published until the cell reports a new episode
            if time.monotonic() > next_publish:
                self._publish_reset(seed)
                next_publish = time.monotonic() + 0.5
            if time.monotonic() > deadline:
                raise RobotError(f"no new episode within {self.config.connect_timeout} s of asking {t.reset} for one")
            time.sleep(0.01)
        self._success = False
        count = self.store.messages
        while self.store.messages < count + 3:  # a state from after the reset
            if time.monotonic() > deadline:
                raise RobotError(f"no state after the reset within {self.config.connect_timeout} s")
            time.sleep(0.005)
        return True

    # --- transport ------------------------------------------------------------------------------
    @abstractmethod
    def _link_alive(self) -> bool: ...

    @abstractmethod
    def _publish_pose(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> None: ...

    @abstractmethod
    def _publish_trajectory(self, q: np.ndarray, seconds: float) -> None: ...

    @abstractmethod
    def _publish_gripper(self, width: float) -> None: ...

    @abstractmethod
    def _publish_reset(self, seed: int) -> None: ...
