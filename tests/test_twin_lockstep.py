"""The lockstep digital twin: one simulation step per command, and a driver that reads that step's
state, so a deploy through the middleware is the same rollout as robot=sim."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from envs.robot import RobotConfig, SafetyConfig, make_robot
from tests.conftest import twin_topics

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def lockstep_twin(ros_domain):
    from envs.robot.twin import DigitalTwin

    with DigitalTwin(RobotConfig(lockstep=True)) as twin:
        yield twin


@pytest.mark.parametrize("backend", ["ros2", "rosbridge"])
def test_the_twin_steps_once_per_command_and_the_driver_reads_that_step(lockstep_twin, backend):
    from envs.robot.rosbridge_server import RosbridgeServer

    twin = lockstep_twin
    # the watchdog's hold (after command_deadline without a command) would be a command, so a step
    safety = SafetyConfig(observation_deadline=5.0, command_deadline=60.0)
    cfg = twin_topics(RobotConfig(backend=backend, lockstep=True, safety=safety))
    with RosbridgeServer(port=0) as bridge:
        cfg.rosbridge_port = bridge.port
        with make_robot(cfg) as robot:
            assert robot.reset_episode(3) and twin.episode_seed == 3 and twin.steps == 0
            time.sleep(0.5)
            assert twin.steps == 0  # no clock: without a command nothing moves
            for k in range(1, 6):
                robot.send_action(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))  # +x, closing
                assert twin.steps == k
                pos, _ = twin.env.unwrapped.scene.eef_pose()
                np.testing.assert_allclose(robot.read_state().eef_pos, pos, atol=1e-5)  # that step's state
            assert twin._gripper_action == 1.0  # the gripper went with every command
            assert robot.read_state().eef_pos[0] > twin.commands[0]["eef_pos"][0] + 0.01


def test_vla_deploy_through_the_lockstep_twin(lockstep_twin, trained_run, ros_domain, tmp_path):
    """What a user types (the twin runs in this process here): `vla deploy robot=twin-lockstep`."""
    twin, out = lockstep_twin, tmp_path / "deploy"
    deploy = subprocess.run(
        [sys.executable, "-m", "vla.cli", "deploy", "robot=twin-lockstep", f"deploy.checkpoint={trained_run}",
         f"deploy.output_dir={out}", "deploy.episodes=2", "deploy.max_steps=10", "deploy.async_inference=false",
         "deploy.stop_on_success=false", "deploy.record=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
        env={**os.environ, "ROS_DOMAIN_ID": ros_domain})
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["held_steps"] == 0 and summary["safety"]["commands_sent"] == 20
    # the second episode's ten commands took ten steps; a hold is a command too (the safety layer's
    # on disconnect, and its watchdog's after a pause), one step each
    assert 10 <= twin.steps <= 12
