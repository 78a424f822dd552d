"""The `sim` backend: the tabletop Panda itself behind the `Robot` interface.

Lockstep: each command advances the simulation by one control period (robosuite's OSC_POSE
at 20 Hz), so a deploy run on `sim` is the same rollout `vla eval` does, through the driver
interface and the safety layer. The digital twin (`envs.robot.twin`) is the free-running,
middleware-facing counterpart.
"""

from __future__ import annotations

import time

import numpy as np

from envs.robot.base import Command, Robot, RobotState, robosuite_gripper
from vla.features import image_key
from envs.robot.config import RobotConfig


class SimRobot(Robot):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        if config.action_space != "eef_delta":
            raise ValueError("the sim backend runs robosuite's OSC_POSE controller: use robot.action_space=eef_delta")
        self.env = None
        self.success = False

    def _connect(self) -> None:
        from envs.tabletop import make_env

        self.env = make_env(self.config.sim_task, image_size=self.config.image_size,
                            cameras=tuple(self.config.cameras), max_episode_steps=10**9, terminate_on_success=False)
        self.env.reset(seed=self.config.sim_seed)
        self.success = False

    def task_success(self) -> bool:
        return self.success

    def reset_episode(self, seed: int) -> bool:
        self.env.reset(seed=seed)
        self.success = False
        return True

    def _disconnect(self) -> None:
        self.env.close()
        self.env = None

    def _read(self) -> RobotState:
        scene = self.env.unwrapped.scene
        eef_pos, eef_rot = scene.eef_pose()
        obs = self.env.unwrapped._last_obs
        joints = scene.sim.data.qpos[scene.robots[0]._ref_joint_pos_indexes].copy()
        fingers = scene.gripper_qpos()
        images = {c: obs[image_key(c)] for c in self.config.cameras}
        # The simulation only advances on a command, so its state is always current.
        return RobotState(time.monotonic(), joints, eef_pos, eef_rot, float(fingers[0] - fingers[1]), images,
                          fingers=np.array([fingers[0], -fingers[1]]))

    def _send(self, command: Command) -> None:
        state = self._read()
        action = self.action_from(command, state)
        action[-1] = robosuite_gripper(command.gripper_width, self.config.gripper_open_width)
        _, _, _, _, info = self.env.step(action)
        self.success = self.success or bool(info["is_success"])

    def _hold(self) -> None:
        self._send(self.hold_command(self._read()))
