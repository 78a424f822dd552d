"""The digital twin: the tabletop Panda in MuJoCo as a ROS 2 node that behaves like franka_ros2.

    vla twin robot.sim_task=lift robot.sim_seed=0          # until Ctrl-C

It publishes what a franka_ros2 bring-up publishes, at the control rate, on the topics of
`RobotConfig.topics`:

    /joint_states                                  sensor_msgs/JointState   arm (7) + fingers (2)
    /franka_robot_state_broadcaster/current_pose   geometry_msgs/PoseStamped  TCP in the base frame
    /camera/<name>/image_raw                       sensor_msgs/Image  rgb8, one per camera

and obeys the same command topics a deploy run publishes on:

    pose target (PoseStamped)     tracked by robosuite's OSC_POSE controller, like an impedance
                                  controller tracks its equilibrium pose
    joint trajectory              the last point's joint target, turned into the pose it gives by
                                  the model's forward kinematics and tracked the same way (the
                                  redundant elbow may settle differently than on a joint controller)
    gripper width (Float64)       robosuite's gripper, 0 = closed .. open width

Like a real controller that loses its command stream, it holds the current pose when no
command arrives for `command_timeout` seconds. With ``robot.lockstep=true`` it does not run on a
clock: it takes one simulation step each time it has received an arm command and a gripper
command (a lockstep driver sends both every time), then publishes the state that step produced,
so a deploy run through DDS or rosbridge is the same rollout as `robot=sim`. Three topics exist
only on the twin, for test harnesses and benchmarks: ``/twin/reset`` (std_msgs/Int64: a new
episode with that seed), ``/twin/episode`` (std_msgs/Int64: how many episodes have started)
and ``/twin/success`` (std_msgs/Bool: the task's success predicate so far this episode), every
period. For fault injection, `muted` names streams to stop publishing (a camera or encoder
dropping out), and `commands` logs every command received with the measured pose at that moment.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

import numpy as np

from envs.robot.base import pose_delta, robosuite_gripper
from envs.robot.config import RobotConfig
from envs.robot.ros2 import import_rclpy
from envs.robot.ros_common import camera_topics, matrix_to_quat, pose_to_matrix

logger = logging.getLogger(__name__)

RESET_TOPIC = "/twin/reset"
SUCCESS_TOPIC = "/twin/success"
EPISODE_TOPIC = "/twin/episode"


class DigitalTwin:
    """A free-running simulated Panda behind franka_ros2-style topics; `start()` / `stop()`."""

    def __init__(self, config: RobotConfig, *, command_timeout: float = 0.2):
        import_rclpy()
        self.config = config
        self.cameras = camera_topics(config)
        self.command_timeout = command_timeout
        self.steps = 0
        self.success = False
        self.step_seconds: list[float] = []  # how long each simulated period took to compute
        self._lock = threading.Lock()
        self._target: tuple[np.ndarray, np.ndarray] | None = None  # pos, rot in the world frame
        self._joint_target: np.ndarray | None = None
        self._gripper_action = -1.0  # open
        self._last_command = 0.0
        self._pending_reset: int | None = None
        self._step_request = threading.Event()  # lockstep: both command kinds arrived, or a reset
        self._commanded = {"arm": False, "gripper": False}
        self._last_published: list = []  # (publisher, message) of the latest state
        self.muted: set[str] = set()  # streams not published: "joint_states", "ee_pose", or a camera
        self.commands: list[dict] = []  # every arm command received (world frame), with the measured state
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> DigitalTwin:
        """Build the simulator and the node on the twin's own thread (it owns the GL context)."""
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vla-twin", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the digital twin did not come up within {timeout} s")
        if self._error is not None:
            self._thread = None
            raise self._error
        logger.info("digital twin up: %s, seed %d, %g Hz", self.config.sim_task, self.config.sim_seed,
                    self.config.control_hz)
        return self

    def _run(self) -> None:
        try:
            self._build()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        # Commands arrive on the executor's thread, as a real controller takes them, not
        # between simulation steps; this thread owns the simulator (and its GL context).
        spinner = threading.Thread(target=self._spin, name="vla-twin-ros", daemon=True)
        spinner.start()
        period, next_tick = 1.0 / self.config.control_hz, time.monotonic()
        try:
            while self.config.lockstep and not self._stopping.is_set():
                if self._step_request.wait(0.5):
                    self._step_request.clear()
                    self._tick()
                else:  # idle: the last state again, stamped as it was, for a driver that just connected
                    for publisher, msg in self._last_published:
                        publisher.publish(msg)
            while not self._stopping.is_set():
                self._tick()
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay < 0:  # behind (a slow CPU): keep the rate from now on, do not burst
                    next_tick, delay = time.monotonic(), 0.0
                self._stopping.wait(delay)
        finally:
            self._executor.shutdown(timeout_sec=2.0)
            spinner.join(timeout=5.0)
            self.env.close()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # shut down by stop()
            pass

    def _build(self) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64, Int64
        from trajectory_msgs.msg import JointTrajectory

        from envs.tabletop import make_env

        cfg, t = self.config, self.config.topics
        self.env = make_env(cfg.sim_task, image_size=cfg.image_size, cameras=tuple(cfg.cameras),
                            max_episode_steps=10**9, terminate_on_success=False)
        self.env.reset(seed=cfg.sim_seed)
        scene = self.env.unwrapped.scene
        robot = scene.robots[0]
        base = scene.sim.model.body_name2id(robot.robot_model.root_body)
        self._base_pos = scene.sim.data.body_xpos[base].copy()
        self._base_rot = scene.sim.data.body_xmat[base].reshape(3, 3).copy()
        self._arm_qpos = robot._ref_joint_pos_indexes
        self._arm_qvel = robot._ref_joint_vel_indexes
        self._fingers = robot._ref_gripper_joint_pos_indexes["right"]

        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node("vla_digital_twin", context=self._context)
        self._joint_pub = self.node.create_publisher(JointState, t.joint_states, 1)
        self._pose_pub = self.node.create_publisher(PoseStamped, t.ee_pose, 1)
        self._image_pubs = {c: self.node.create_publisher(Image, topic, 1) for c, topic in self.cameras.items()}
        self._success_pub = self.node.create_publisher(Bool, SUCCESS_TOPIC, 1)
        self._episode_pub = self.node.create_publisher(Int64, EPISODE_TOPIC, 1)
        self.episode_seed = cfg.sim_seed
        self.episodes = 1  # episodes started; /twin/episode publishes it so a reset can be confirmed
        self.node.create_subscription(PoseStamped, t.pose_command, self._on_pose_command, 1)
        self.node.create_subscription(JointTrajectory, t.joint_trajectory_command, self._on_joint_command, 1)
        self.node.create_subscription(Float64, t.gripper_command, self._on_gripper_command, 1)
        self.node.create_subscription(Int64, RESET_TOPIC, self._on_reset, 1)
        self._msgs = (JointState, PoseStamped, Image, Bool, Int64)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._publish()

    def stop(self) -> None:
        import rclpy

        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=10.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)
        self._thread = None

    def __enter__(self) -> DigitalTwin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self, seed: int) -> None:
        """A new episode at the next period (thread-safe; also what /twin/reset does)."""
        with self._lock:
            self._pending_reset = seed
            self._step_request.set()  # lockstep: applied (and published) at once, without a step

    # --- commands (the ROS thread) --------------------------------------------------------------
    def _on_pose_command(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        pos, rot = pose_to_matrix((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        self._set_target((self._base_rot @ pos + self._base_pos, self._base_rot @ rot), "pose", None)

    def _on_joint_command(self, msg) -> None:
        if not msg.points:
            return
        index = {n: i for i, n in enumerate(msg.joint_names)}
        missing = [n for n in self.config.topics.arm_joints if n not in index]
        if missing:
            self.node.get_logger().warning(f"joint trajectory without joints {missing}: ignored")
            return
        q = np.array([msg.points[-1].positions[index[n]] for n in self.config.topics.arm_joints])
        self._set_target(self._forward_kinematics(q), "joints", q)

    def _set_target(self, target: tuple[np.ndarray, np.ndarray], kind: str, joints: np.ndarray | None) -> None:
        scene = self.env.unwrapped.scene
        pos, rot = scene.eef_pose()
        with self._lock:
            self._target = target
            self._last_command = time.monotonic()
            self.commands.append({"time": self._last_command, "kind": kind, "target_pos": target[0],
                                  "target_rot": target[1], "target_joints": joints, "eef_pos": pos, "eef_rot": rot,
                                  "joints": scene.sim.data.qpos[self._arm_qpos].copy()})
            self._commanded_one("arm")

    def _on_gripper_command(self, msg) -> None:
        with self._lock:
            self._gripper_action = robosuite_gripper(msg.data, self.config.gripper_open_width)
            self._commanded_one("gripper")

    def _commanded_one(self, kind: str) -> None:
        """Under the lock: lockstep steps once both an arm and a gripper command have arrived."""
        self._commanded[kind] = True
        if self.config.lockstep and all(self._commanded.values()):
            self._commanded = {"arm": False, "gripper": False}
            self._step_request.set()

    def _on_reset(self, msg) -> None:
        self.reset(int(msg.data))

    # --- simulation ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        start = time.perf_counter()
        with self._lock:
            if self._pending_reset is not None:
                self.env.reset(seed=self._pending_reset)
                self.episode_seed = self._pending_reset
                self.episodes += 1
                self._pending_reset, self._target, self._gripper_action = None, None, -1.0
                self.steps, self.success = 0, False
                if self.config.lockstep:  # a new episode is published as it is, not stepped
                    self._commanded = {"arm": False, "gripper": False}
                    self._step_request.clear()
                    self._publish()
                    return
            stale = time.monotonic() - self._last_command > self.command_timeout
            if self._target is not None and stale and not self.config.lockstep:
                self._target = None  # the command stream stopped: hold here
            target, gripper = self._target, self._gripper_action
        self.env.step(self._tracking_action(target, gripper))
        self.steps += 1
        self.success = self.success or self.env.unwrapped.is_success()
        self._publish()
        self.step_seconds.append(time.perf_counter() - start)

    def _tracking_action(self, target, gripper: float) -> np.ndarray:
        """The OSC_POSE delta action that moves toward `target` (zero motion without one)."""
        action = np.zeros(7)
        action[6] = gripper
        if target is not None:
            pos, rot = self.env.unwrapped.scene.eef_pose()
            action[:6] = pose_delta(*target, pos, rot, self.config.translation_scale, self.config.rotation_scale)
        return np.clip(action, -1.0, 1.0)

    def _forward_kinematics(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World pose of the grip site at arm joints `q`, on a scratch copy of the model's data."""
        import mujoco

        scene = self.env.unwrapped.scene
        model = scene.sim.model._model
        data = mujoco.MjData(model)
        data.qpos[:] = scene.sim.data.qpos
        data.qpos[self._arm_qpos] = q
        mujoco.mj_kinematics(model, data)
        site = scene.robots[0].eef_site_id["right"]
        return data.site_xpos[site].copy(), data.site_xmat[site].reshape(3, 3).copy()

    def _publish(self) -> None:
        JointState, PoseStamped, Image, Bool, Int64 = self._msgs
        scene = self.env.unwrapped.scene
        stamp = self.node.get_clock().now().to_msg()
        t = self.config.topics
        qpos, qvel = scene.sim.data.qpos, scene.sim.data.qvel
        js = JointState()
        js.header.stamp = stamp
        js.name = list(t.arm_joints) + list(t.finger_joints)
        # franka_ros2 reports both fingers as positive openings; robosuite's second finger is negative.
        js.position = [float(v) for v in qpos[self._arm_qpos]] + [float(abs(v)) for v in qpos[self._fingers]]
        js.velocity = [float(v) for v in qvel[self._arm_qvel]] + [0.0, 0.0]
        published = [] if "joint_states" in self.muted else [(self._joint_pub, js)]

        pos, rot = scene.eef_pose()
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, t.frame_id
        p = self._base_rot.T @ (pos - self._base_pos)
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in p)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in matrix_to_quat(self._base_rot.T @ rot))
        if "ee_pose" not in self.muted:
            published.append((self._pose_pub, pose))

        obs = self.env.unwrapped._last_obs
        for camera, pub in self._image_pubs.items():
            if camera in self.muted:
                continue
            frame = obs[f"observation.images.{camera}"]
            img = Image()
            img.header.stamp, img.header.frame_id = stamp, f"{camera}_optical_frame"
            img.height, img.width = frame.shape[:2]
            img.encoding, img.is_bigendian, img.step = "rgb8", 0, frame.shape[1] * 3
            img.data = frame.tobytes()
            published.append((pub, img))
        published += [(self._success_pub, Bool(data=bool(self.success))),
                      (self._episode_pub, Int64(data=int(self.episodes)))]
        for publisher, msg in published:
            publisher.publish(msg)
        self._last_published = published


def run_twin(config: RobotConfig) -> None:
    """Serve the twin until Ctrl-C, printing its step rate every few seconds."""
    with DigitalTwin(config) as twin:
        print(f"digital twin: {config.sim_task} (seed {config.sim_seed}) at {config.control_hz:g} Hz; "
              f"state on {config.topics.joint_states} and {config.topics.ee_pose}; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(5.0)
                recent = twin.step_seconds[-100:]
                if recent:
                    print(f"  {twin.steps} steps, compute {1000 * np.mean(recent):.1f} ms/period, "
                          f"success={twin.success}", flush=True)
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the tabletop Panda as a franka_ros2-like ROS 2 node")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hz", type=float, default=20.0)
    args = parser.parse_args(argv)
    run_twin(RobotConfig(sim_task=args.task, sim_seed=args.seed, control_hz=args.hz))


if __name__ == "__main__":
    main()
