"""Robot driver configuration: which backend, which action space, where the limits are.

Plain dataclasses with no heavy imports (no torch, no rclpy): Hydra composes them under
``robot:`` in ``configs/robot/*.yaml``, and a robot-side process can read them alone.

Frames. Policies trained in the tabletop tasks see the end-effector pose in the *policy frame*:
robosuite's world, where the Panda's base sits at ``base_position`` (x forward, z up) and the
gripper site's orientation is robosuite's. A robot reports its flange/TCP pose in its own base
frame; the driver maps it into the policy frame with ``base_position`` and ``ee_rotation_offset``
(measure both once when you set the robot up; the defaults are the tabletop scene's, which is
what the digital twin reports). Workspace limits are in the policy frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Franka Panda / FR3 joint limits (rad), from Franka's datasheet (the tabletop Panda's MJCF agrees).
PANDA_JOINT_LOW = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
PANDA_JOINT_HIGH = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
PANDA_JOINT_VELOCITY = [2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61]  # rad/s
PANDA_ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PANDA_FINGER_JOINTS = ["panda_finger_joint1", "panda_finger_joint2"]
# The tabletop scene's Panda base in its world (m): where the policy frame puts the robot.
TABLETOP_BASE_POSITION = [-0.56, 0.0, 0.912]

ACTION_SPACES = ("eef_delta", "joint_position")
BACKENDS = ("sim", "ros2", "rosbridge", "franky")
FRANKY_CONTROLS = ("motion", "tracker")  # see envs/robot/franky.py


@dataclass
class SafetyConfig:
    """Limits every command passes through (`envs.robot.safety.SafeRobot`), whatever the backend.

    A command outside a limit is changed to the nearest command inside it and logged; a
    non-finite action, a stale observation or a lost link holds the arm and stops the run.
    """

    # End-effector workspace box in the policy frame (m): the tabletop's reachable volume above
    # the table (table top at z = 0.8). Set it to your cell's free space on a real arm.
    workspace_low: list[float] = field(default_factory=lambda: [-0.30, -0.35, 0.805])
    workspace_high: list[float] = field(default_factory=lambda: [0.25, 0.35, 1.25])
    joint_low: list[float] = field(default_factory=lambda: list(PANDA_JOINT_LOW))
    joint_high: list[float] = field(default_factory=lambda: list(PANDA_JOINT_HIGH))
    joint_margin: float = 0.05            # rad kept clear of each joint limit
    # Largest change one command may ask for, relative to the measured state.
    max_translation_step: float = 0.05    # m per command (the tabletop's full-scale action)
    max_rotation_step: float = 0.5        # rad per command
    max_joint_step: float = 0.1           # rad per command (joint_position action space)
    # Velocity limits: a command may not ask to move faster than this over one control period.
    max_eef_speed: float = 1.0            # m/s (Franka's Cartesian limit is 1.7 m/s)
    max_joint_velocity: list[float] = field(default_factory=lambda: [0.5 * v for v in PANDA_JOINT_VELOCITY])
    # A policy that keeps pushing against the limits (this many commands in a row changed by a
    # step, speed, workspace or joint limit) is stopped: something is wrong, not just one bad chunk.
    max_consecutive_limited: int = 40
    # Watchdog: an observation older than this (s) holds the arm and stops the run.
    observation_deadline: float = 0.25
    # Watchdog: no command for this long (s) while connected holds the arm (the policy hung).
    command_deadline: float = 0.5


@dataclass
class RosTopics:
    """Topic names and message types; defaults are franka_ros2's where a standard type exists."""

    joint_states: str = "/joint_states"                                   # sensor_msgs/JointState, arm + gripper
    ee_pose: str = "/franka_robot_state_broadcaster/current_pose"         # geometry_msgs/PoseStamped, base frame
    # Cartesian target for a pose-tracking controller (franka_ros2's cartesian impedance / pose
    # examples take a PoseStamped equilibrium pose); geometry_msgs/PoseStamped.
    pose_command: str = "/cartesian_impedance_controller/equilibrium_pose"
    # ros2_control's joint_trajectory_controller; trajectory_msgs/JointTrajectory.
    joint_trajectory_command: str = "/joint_trajectory_controller/joint_trajectory"
    # franka_ros2's gripper is driven by actions (franka_msgs Move/Grasp); no wheel exists for
    # those types, so the default bridge is a topic carrying the target width (m),
    # std_msgs/Float64, which a 20-line relay on the robot PC turns into gripper actions.
    gripper_command: str = "/franka_gripper/width_command"
    # Camera topics, one per policy camera; sensor_msgs/Image, rgb8 or bgr8.
    cameras: dict[str, str] = field(default_factory=lambda: {
        "agentview": "/camera/agentview/image_raw", "wrist": "/camera/wrist/image_raw"})
    arm_joints: list[str] = field(default_factory=lambda: list(PANDA_ARM_JOINTS))
    finger_joints: list[str] = field(default_factory=lambda: list(PANDA_FINGER_JOINTS))
    frame_id: str = "panda_link0"         # the frame commands are stamped in
    # Optional, for simulated cells (the digital twin's /twin/success, /twin/reset, /twin/episode):
    # std_msgs/Bool task success; std_msgs/Int64 seed of a new episode to start, and the number of
    # episodes started so far (how a reset is confirmed). None on a real robot.
    success: str | None = None
    reset: str | None = None
    episode: str | None = None


@dataclass
class RobotConfig:
    backend: str = "sim"                  # sim | ros2 | rosbridge | franky
    action_space: str = "eef_delta"       # eef_delta: dpos (3) | daxis-angle (3) | gripper;
                                          # joint_position: q (7) | gripper
    control_hz: float = 20.0
    cameras: list[str] = field(default_factory=lambda: ["agentview", "wrist"])
    image_size: int = 96                  # images are resized to this square size
    # Action units: an eef_delta action of 1 asks for this many m / rad (the tabletop's OSC_POSE).
    translation_scale: float = 0.05
    rotation_scale: float = 0.5
    # Gripper: width (m) when open; the action closes it above +threshold, opens below -threshold.
    gripper_open_width: float = 0.08
    gripper_threshold: float = 0.0
    # Frames: see the module docstring.
    base_position: list[float] = field(default_factory=lambda: list(TABLETOP_BASE_POSITION))
    ee_rotation_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # axis-angle, right-multiplied
    task: str | None = None               # the instruction given to the policy; None = sim_task's
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    topics: RosTopics = field(default_factory=RosTopics)
    # sim backend: which tabletop task, and its seed
    sim_task: str = "lift"
    sim_seed: int = 0
    # rosbridge backend
    rosbridge_host: str = "127.0.0.1"
    rosbridge_port: int = 9090
    # franky backend
    franky_host: str = "172.16.0.2"
    franky_dynamics_factor: float = 0.2   # fraction of Franka's velocity/acceleration limits for motions
    franky_control: str = "motion"        # motion: a Ruckig motion per target | tracker: one streaming
                                          # Cartesian impedance controller (eef_delta only)
    connect_timeout: float = 10.0         # s to wait for the first complete observation
    # Lockstep (the digital twin and the ROS / rosbridge drivers): the twin steps its simulation once
    # per arm command instead of at control_hz, and the driver waits after each command for the state
    # it produced. `vla deploy` through the middleware then rolls out exactly as `robot=sim` does, so
    # a difference in success is the middleware's, not the CPU's (configs/robot/twin-lockstep.yaml).
    lockstep: bool = False

    def check(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.backend not in BACKENDS:
            raise ValueError(f"robot.backend={self.backend!r}; choose one of {list(BACKENDS)}")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"robot.action_space={self.action_space!r}; choose one of {list(ACTION_SPACES)}")
        if self.franky_control not in FRANKY_CONTROLS:
            raise ValueError(f"robot.franky_control={self.franky_control!r}; choose one of {list(FRANKY_CONTROLS)}")
        if self.control_hz <= 0:
            raise ValueError(f"robot.control_hz={self.control_hz} must be > 0")
        s = self.safety
        for name in ("workspace_low", "workspace_high", "base_position", "ee_rotation_offset"):
            value = getattr(s, name, None) if name.startswith("workspace") else getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"robot.{'safety.' if name.startswith('workspace') else ''}{name} "
                                 f"needs 3 values, got {value}")
        if any(lo >= hi for lo, hi in zip(s.workspace_low, s.workspace_high)):
            raise ValueError(f"robot.safety.workspace_low {s.workspace_low} "
                             f"must be below workspace_high {s.workspace_high}")
        for name in ("joint_low", "joint_high", "max_joint_velocity"):
            if len(getattr(s, name)) != 7:
                raise ValueError(f"robot.safety.{name} needs 7 values (one per Panda joint)")
        for name in ("max_translation_step", "max_rotation_step", "max_joint_step", "max_eef_speed",
                     "max_consecutive_limited", "observation_deadline", "command_deadline"):
            if getattr(s, name) <= 0:
                raise ValueError(f"robot.safety.{name} must be > 0")
