"""What the ros2 and rosbridge backends share: the latest-message store and image decoding.

Both backends receive the same four kinds of message (JointState, PoseStamped, Image, from
franka_ros2-style topics) and turn them into one `RobotState`. Middleware callbacks feed
`StreamStore` with numpy values; the control loop reads a consistent snapshot. Each stream
remembers when it last arrived (time.monotonic()), and a snapshot's stamp is that of its oldest
stream, so a camera that stops publishing makes the whole observation stale.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot.base import NotYet, RobotState
from envs.robot.config import RobotConfig

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


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


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

    def put_joint_state(self, names: list[str], positions) -> None:
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
            self.messages += 1

    def put_pose(self, position, quat_xyzw) -> None:
        pos, rot = pose_to_matrix(position, quat_xyzw)
        with self._lock:
            self._pose = (time.monotonic(), pos, rot)
            self.messages += 1

    def put_image(self, camera: str, image: np.ndarray) -> None:
        image = resize(image, self.config.image_size)
        with self._lock:
            self._images[camera] = (time.monotonic(), image)
            self.messages += 1

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
