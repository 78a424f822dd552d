"""The `ros2` backend: an rclpy node talking to franka_ros2-style topics over DDS.

    reads     /joint_states (sensor_msgs/JointState, arm + fingers)
              /franka_robot_state_broadcaster/current_pose (geometry_msgs/PoseStamped, base frame)
              one sensor_msgs/Image topic per camera
    commands  eef_delta:       geometry_msgs/PoseStamped target  -> a pose-tracking controller
              joint_position:  trajectory_msgs/JointTrajectory (one point, reached in one period)
              gripper:         std_msgs/Float64 target width (m), published when it changes

Every name is in `RobotConfig.topics`. The node spins in its own rclpy context on a background
thread, so it coexists with other rclpy users in the process (the digital twin in tests).
Subscriptions use the sensor-data QoS (best effort, depth 1): that matches both reliable and
best-effort publishers, and a late message is worth nothing to a controller.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np

from envs.robot.base import Command, LinkLost, Robot, RobotError, RobotState
from envs.robot.config import RobotConfig
from envs.robot.ros_common import StreamStore, camera_topics, decode_image, matrix_to_quat

_node_ids = itertools.count()


def import_rclpy():
    try:
        import rclpy  # noqa: F401
        from geometry_msgs.msg import PoseStamped  # noqa: F401
        from sensor_msgs.msg import Image, JointState  # noqa: F401
        from std_msgs.msg import Float64  # noqa: F401
        from trajectory_msgs.msg import JointTrajectory  # noqa: F401
    except ImportError as e:
        raise RobotError(f"the ros2 backend needs rclpy and the standard messages ({e.name} is missing): "
                         "source a ROS 2 Jazzy install, or pip install ros-jazzy-rclpy ros-jazzy-rmw-fastrtps-cpp "
                         "ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs ros-jazzy-trajectory-msgs; "
                         "or use robot.backend=rosbridge") from None


class Ros2Robot(Robot):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self.cameras = camera_topics(config)
        self.store = StreamStore(config)
        self._context = self._node = self._executor = self._thread = None
        self._last_gripper_sent: tuple[float, float] | None = None  # width, when

    # --- lifecycle ------------------------------------------------------------------------------
    def _connect(self) -> None:
        import_rclpy()
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64
        from trajectory_msgs.msg import JointTrajectory

        t = self.config.topics
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node(f"vla_driver_{next(_node_ids)}", context=self._context)
        sensor = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability)
        self._node.create_subscription(JointState, t.joint_states, self._on_joint_state, sensor)
        self._node.create_subscription(PoseStamped, t.ee_pose, self._on_pose, sensor)
        for camera, topic in self.cameras.items():
            self._node.create_subscription(Image, topic, lambda m, c=camera: self._on_image(c, m), sensor)
        self._pose_pub = self._node.create_publisher(PoseStamped, t.pose_command, 1)
        self._traj_pub = self._node.create_publisher(JointTrajectory, t.joint_trajectory_command, 1)
        self._grip_pub = self._node.create_publisher(Float64, t.gripper_command, 1)
        self._success = None
        if t.success:
            from std_msgs.msg import Bool

            self._node.create_subscription(Bool, t.success, self._on_success, 1)
        self._reset_pub, self._episode = None, None
        if t.reset and t.episode:
            from std_msgs.msg import Int64

            self._reset_pub = self._node.create_publisher(Int64, t.reset, 1)
            self._node.create_subscription(Int64, t.episode, self._on_episode, 1)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="vla-ros2-driver", daemon=True)
        self._thread.start()
        self._last_gripper_sent = None

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # context shut down under us: _read reports the link as lost
            pass

    def _disconnect(self) -> None:
        import rclpy

        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)
        self._thread.join(timeout=2.0)

    # --- callbacks (executor thread) -------------------------------------------------------------
    def _on_joint_state(self, msg) -> None:
        self.store.put_joint_state(list(msg.name), msg.position)

    def _on_pose(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.store.put_pose((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))

    def _on_episode(self, msg) -> None:
        self._episode = int(msg.data)

    def _on_success(self, msg) -> None:
        self._success = bool(msg.data)

    def _on_image(self, camera: str, msg) -> None:
        self.store.put_image(camera, decode_image(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data)))

    def task_success(self) -> bool | None:
        return self._success

    def reset_episode(self, seed: int) -> bool:
        """Ask the cell for a new episode on topics.reset; wait until topics.episode reports it."""
        if self._reset_pub is None:
            return False
        from std_msgs.msg import Int64

        deadline = time.monotonic() + self.config.connect_timeout
        next_publish = 0.0
        while self._episode != seed:  # published until the cell reports the new episode
            if time.monotonic() > next_publish:
                self._reset_pub.publish(Int64(data=int(seed)))
                next_publish = time.monotonic() + 0.5
            if time.monotonic() > deadline:
                raise RobotError(f"no fresh state within {self.config.connect_timeout} s of asking "
                                 f"{self.config.topics.reset} for a new episode")
            time.sleep(0.01)
        self._success = False
        count = self.store.messages
        while self.store.messages < count + 3:  # a state from after the reset
            time.sleep(0.005)
        return True

    # --- primitives -------------------------------------------------------------------------------
    def _read(self) -> RobotState:
        if not self._context.ok() or not self._thread.is_alive():
            raise LinkLost("the rclpy context has shut down")
        return self.store.snapshot(self.to_policy_frame)

    def _send(self, command: Command) -> None:
        if command.joint_pos is not None:
            self._traj_pub.publish(self._trajectory(command.joint_pos))
        else:
            self._pose_pub.publish(self._pose(command.eef_pos, command.eef_rot))
        self._send_gripper(command.gripper_width)

    def _hold(self) -> None:
        state = self.store.snapshot(self.to_policy_frame)
        if self.config.action_space == "joint_position":
            self._traj_pub.publish(self._trajectory(state.joint_pos))
        else:
            self._pose_pub.publish(self._pose(state.eef_pos, state.eef_rot))

    # --- messages ---------------------------------------------------------------------------------
    def _pose(self, pos: np.ndarray, rot: np.ndarray):
        from geometry_msgs.msg import PoseStamped

        pos, rot = self.to_base_frame(pos, rot)
        msg = PoseStamped()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.config.topics.frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
        q = matrix_to_quat(rot)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        return msg

    def _trajectory(self, q: np.ndarray):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.joint_names = list(self.config.topics.arm_joints)
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in q]
        period_ns = int(1e9 / self.config.control_hz)
        point.time_from_start = Duration(sec=period_ns // 10**9, nanosec=period_ns % 10**9)
        msg.points = [point]
        return msg

    def _send_gripper(self, width: float) -> None:
        # On change, and again every second: a relay that turns widths into gripper actions
        # acts on changes, and a repeat covers a message lost before the subscriber matched.
        now = time.monotonic()
        if (self._last_gripper_sent is not None and abs(width - self._last_gripper_sent[0]) < 1e-3
                and now - self._last_gripper_sent[1] < 1.0):
            return
        from std_msgs.msg import Float64

        self._grip_pub.publish(Float64(data=float(width)))
        self._last_gripper_sent = (width, now)
