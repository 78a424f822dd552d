"""Robot drivers: one `Robot` interface, four backends, one safety layer.

    from envs.robot import make_robot
    from envs.robot.config import RobotConfig

    with make_robot(RobotConfig(backend="ros2")) as robot:     # a SafeRobot around the backend
        obs = robot.get_observation()                         # vla.features keys, numpy
        sent = robot.send_action(action)                      # the action after the safety layer

Backends (imported lazily, so each needs only its own middleware):

    sim        the tabletop Panda in MuJoCo, lockstep          envs.robot.sim
    ros2       rclpy: /joint_states, cameras, pose / joint / gripper command topics   envs.robot.ros2
    rosbridge  the same topics over a rosbridge websocket (roslibpy), no ROS install   envs.robot.rosbridge
    franky     libfranka through franky-control                 envs.robot.franky

`vla twin` (envs.robot.twin) serves the tabletop Panda on the ros2 topics, so every path can
be exercised without a robot. Nothing in this package imports torch.
"""

from __future__ import annotations

from pathlib import Path

from envs.robot.base import Command, Robot, RobotState
from envs.robot.config import RobotConfig, SafetyConfig
from vla.errors import LinkLost, NotYet, RobotError

__all__ = ["Command", "LinkLost", "NotYet", "Robot", "RobotConfig", "RobotError", "RobotState", "SafetyConfig",
           "make_backend", "make_robot"]


def make_backend(config: RobotConfig, **kwargs) -> Robot:
    """The bare backend named by ``config.backend`` (no safety layer: use make_robot)."""
    config.check()
    if config.backend == "sim":
        from envs.robot.sim import SimRobot as cls
    elif config.backend == "ros2":
        from envs.robot.ros2 import Ros2Robot as cls
    elif config.backend == "rosbridge":
        from envs.robot.rosbridge import RosbridgeRobot as cls
    else:
        from envs.robot.franky import FrankyRobot as cls
    return cls(config, **kwargs)


def make_robot(config: RobotConfig, log_path: str | Path | None = None, *, dry_run: bool = False, **backend_kwargs):
    """The backend behind the safety layer: what every control loop should talk to."""
    from envs.robot.safety import SafeRobot

    return SafeRobot(make_backend(config, **backend_kwargs), log_path=log_path, dry_run=dry_run)
