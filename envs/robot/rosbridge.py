"""The `rosbridge` backend: the `ros2` backend's topics through a rosbridge websocket (roslibpy).

For a policy machine without ROS: a rosbridge server next to the robot (on the robot PC, or
`python -m envs.robot.rosbridge_server` beside the digital twin) relays the same franka_ros2-style
topics as JSON. Topics, types and their meaning are `TopicRobot`'s; only the transport differs.

Link loss is explicit here, unlike on DDS: the websocket closing (server stopped, network down)
marks the link down at once, the next read raises LinkLost, and the safety layer holds and ends
the run. roslibpy would reconnect on its own; a run that lost its link does not resume (the
arm's state is unknown in between) - start a new one.
"""

from __future__ import annotations

import base64
import time

import numpy as np

from envs.robot.config import RobotConfig
from envs.robot.ros_common import TopicRobot, decode_image
from vla.errors import LinkLost, RobotError


def _seconds(msg: dict) -> float | None:
    """A stamped message's header time in seconds (None without one)."""
    stamp = msg.get("header", {}).get("stamp")
    return None if not stamp else stamp.get("sec", 0) + stamp.get("nanosec", 0) * 1e-9


class RosbridgeRobot(TopicRobot):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self.ros = None
        self._link_up = False
        self._topics: list = []

    def _connect(self) -> None:
        try:
            import roslibpy
        except ImportError:
            raise RobotError("the rosbridge backend needs roslibpy: pip install roslibpy") from None
        cfg, t = self.config, self.config.topics
        self.ros = roslibpy.Ros(cfg.rosbridge_host, cfg.rosbridge_port)
        try:
            self.ros.run(timeout=cfg.connect_timeout)
        except Exception as e:  # roslibpy raises its own timeout error; any failure means no bridge
            self._stop_client()
            raise LinkLost(f"no rosbridge server at ws://{cfg.rosbridge_host}:{cfg.rosbridge_port} "
                           f"({type(e).__name__}: {e}); is it running?") from None
        self._link_up = True
        self.ros.on("close", self._on_close)

        def subscribe(name, msg_type, callback, queue_length=1):
            topic = roslibpy.Topic(self.ros, name, msg_type, queue_length=queue_length, reconnect_on_close=False)
            topic.subscribe(callback)
            self._topics.append(topic)

        def advertise(name, msg_type):
            topic = roslibpy.Topic(self.ros, name, msg_type, queue_size=1, reconnect_on_close=False)
            topic.advertise()
            self._topics.append(topic)
            return topic

        subscribe(t.joint_states, "sensor_msgs/msg/JointState",
                  lambda m: self.store.put_joint_state(m["name"], m["position"], _seconds(m)))
        subscribe(t.ee_pose, "geometry_msgs/msg/PoseStamped", self._on_pose)
        for camera, name in self.cameras.items():
            subscribe(name, "sensor_msgs/msg/Image", lambda m, c=camera: self._on_image(c, m))
        self._pose_pub = advertise(t.pose_command, "geometry_msgs/msg/PoseStamped")
        self._traj_pub = advertise(t.joint_trajectory_command, "trajectory_msgs/msg/JointTrajectory")
        self._grip_pub = advertise(t.gripper_command, "std_msgs/msg/Float64")
        if t.success:
            subscribe(t.success, "std_msgs/msg/Bool", lambda m: self._on_success(m["data"]))
        if t.reset and t.episode:
            self._reset_pub = advertise(t.reset, "std_msgs/msg/Int64")
            subscribe(t.episode, "std_msgs/msg/Int64", lambda m: self._on_episode(m["data"]))

    def _on_close(self, *args) -> None:
        self._link_up = False

    def _disconnect(self) -> None:
        if self._link_up:
            for topic in self._topics:
                try:
                    topic.unsubscribe() if topic.is_subscribed else topic.unadvertise()
                except Exception:  # the bridge went away meanwhile
                    pass
        self._topics = []
        self._stop_client()

    def _stop_client(self) -> None:
        # Never ros.terminate(): it stops twisted's reactor, which cannot restart in this process.
        self.ros.factory.stopTrying()
        if self.ros.is_connected:
            try:
                self.ros.close(timeout=2.0)
            except Exception:
                pass
        self._link_up = False

    def _link_alive(self) -> bool:
        return self._link_up and self.ros.is_connected

    # --- callbacks (roslibpy's reactor thread) ----------------------------------------------------
    def _on_pose(self, msg: dict) -> None:
        p, o = msg["pose"]["position"], msg["pose"]["orientation"]
        self.store.put_pose((p["x"], p["y"], p["z"]), (o["x"], o["y"], o["z"], o["w"]), _seconds(msg))

    def _on_image(self, camera: str, msg: dict) -> None:
        data = msg["data"]  # rosbridge sends uint8[] as base64
        raw = base64.b64decode(data) if isinstance(data, str) else bytes(data)
        self.store.put_image(camera, decode_image(msg["encoding"], msg["height"], msg["width"], msg["step"], raw),
                             _seconds(msg))

    # --- publishing -------------------------------------------------------------------------------
    def _header(self) -> dict:
        now = time.time()
        return {"stamp": {"sec": int(now), "nanosec": int((now % 1) * 1e9)}, "frame_id": self.config.topics.frame_id}

    def _publish(self, topic, message: dict) -> None:
        import roslibpy

        if not self._link_alive():
            raise LinkLost("the rosbridge websocket is closed")
        topic.publish(roslibpy.Message(message))

    def _publish_pose(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> None:
        x, y, z = (float(v) for v in pos)
        qx, qy, qz, qw = (float(v) for v in quat_xyzw)
        self._publish(self._pose_pub, {"header": self._header(), "pose": {
            "position": {"x": x, "y": y, "z": z}, "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}})

    def _publish_trajectory(self, q: np.ndarray, seconds: float) -> None:
        nanoseconds = int(seconds * 1e9)
        point = {"positions": [float(v) for v in q], "velocities": [], "accelerations": [], "effort": [],
                 "time_from_start": {"sec": nanoseconds // 10**9, "nanosec": nanoseconds % 10**9}}
        self._publish(self._traj_pub, {"header": self._header(), "joint_names": list(self.config.topics.arm_joints),
                                       "points": [point]})

    def _publish_gripper(self, width: float) -> None:
        self._publish(self._grip_pub, {"data": float(width)})

    def _publish_reset(self, seed: int) -> None:
        self._publish(self._reset_pub, {"data": int(seed)})
