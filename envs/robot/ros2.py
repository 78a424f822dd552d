"""The `ros2` backend: an rclpy node talking to franka_ros2-style topics over DDS.

    reads     /joint_states (sensor_msgs/JointState, arm + fingers)
              /franka_robot_state_broadcaster/current_pose (geometry_msgs/PoseStamped, base frame)
              one sensor_msgs/Image topic per camera
    commands  eef_delta:       geometry_msgs/PoseStamped target  -> a pose-tracking controller
              joint_position:  trajectory_msgs/JointTrajectory (one point, reached in one period)
              gripper:         std_msgs/Float64 target width (m), published when it changes

Every name is in `RobotConfig.topics`; what the topics mean is `TopicRobot`'s. The node spins
in its own rclpy context on a background thread, so it coexists with other rclpy users in the
process (the digital twin in tests). Subscriptions use the sensor-data QoS reliability (best
effort, depth 1): that matches both reliable and best-effort publishers, and a late message is
worth nothing to a controller.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from envs.robot.config import RobotConfig
from envs.robot.ros_common import TopicRobot, decode_image
from vla.errors import RobotError

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


def _seconds(msg) -> float:
    """A stamped message's header time in seconds."""
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class Ros2Robot(TopicRobot):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self._context = self._node = self._executor = self._thread = None

    def _connect(self) -> None:
        import_rclpy()
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64, Int64
        from trajectory_msgs.msg import JointTrajectory

        t = self.config.topics
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        node = self._node = rclpy.create_node(f"vla_driver_{next(_node_ids)}", context=self._context)
        sensor = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability)
        node.create_subscription(JointState, t.joint_states,
                                 lambda m: self.store.put_joint_state(list(m.name), m.position, _seconds(m)), sensor)
        node.create_subscription(PoseStamped, t.ee_pose, self._on_pose, sensor)
        for camera, topic in self.cameras.items():
            node.create_subscription(Image, topic, lambda m, c=camera: self._on_image(c, m), sensor)
        self._pose_pub = node.create_publisher(PoseStamped, t.pose_command, 1)
        self._traj_pub = node.create_publisher(JointTrajectory, t.joint_trajectory_command, 1)
        self._grip_pub = node.create_publisher(Float64, t.gripper_command, 1)
        if t.success:
            node.create_subscription(Bool, t.success, lambda m: self._on_success(m.data), 1)
        if t.reset and t.episode:
            self._reset_pub = node.create_publisher(Int64, t.reset, 1)
            node.create_subscription(Int64, t.episode, lambda m: self._on_episode(m.data), 1)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name="vla-ros2-driver", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # context shut down under us: _link_alive reports it
            pass

    def _disconnect(self) -> None:
        import rclpy

        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)
        self._thread.join(timeout=2.0)

    def _link_alive(self) -> bool:
        # DDS has no link to lose: a silent robot shows up as stale streams (the watchdog's job).
        return self._context.ok() and self._thread.is_alive()

    # --- callbacks (executor thread) -------------------------------------------------------------
    def _on_pose(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.store.put_pose((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), _seconds(msg))

    def _on_image(self, camera: str, msg) -> None:
        self.store.put_image(camera, decode_image(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data)),
                             _seconds(msg))

    # --- publishing -------------------------------------------------------------------------------
    def _publish_pose(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> None:
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.config.topics.frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat_xyzw)
        self._pose_pub.publish(msg)

    def _publish_trajectory(self, q: np.ndarray, seconds: float) -> None:
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.joint_names = list(self.config.topics.arm_joints)
        nanoseconds = int(seconds * 1e9)
        msg.points = [JointTrajectoryPoint(positions=[float(v) for v in q],
                                           time_from_start=Duration(sec=nanoseconds // 10**9,
                                                                    nanosec=nanoseconds % 10**9))]
        self._traj_pub.publish(msg)

    def _publish_gripper(self, width: float) -> None:
        from std_msgs.msg import Float64

        self._grip_pub.publish(Float64(data=float(width)))

    def _publish_reset(self, seed: int) -> None:
        from std_msgs.msg import Int64

        self._reset_pub.publish(Int64(data=int(seed)))
