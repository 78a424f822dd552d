"""The ros2 and rosbridge backends against the digital twin, over real middleware on loopback."""

import time

import numpy as np
import pytest

from envs.robot import RobotConfig, SafetyConfig, make_robot
from tests.conftest import child_hears_ctrl_c, twin_topics
from vla.errors import SafetyStop
from vla.features import OBS_STATE, TASK, image_key

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bridge(twin):
    from envs.robot.rosbridge_server import RosbridgeServer

    with RosbridgeServer(port=0) as server:
        yield server


def robot_config(backend: str, bridge=None, **kwargs) -> RobotConfig:
    # These tests check the transport, not timing: a twin starved of CPU (2 cores, other tests)
    # may miss a period, so the staleness deadline is generous here (the fault suite tests it).
    cfg = twin_topics(RobotConfig(backend=backend, safety=SafetyConfig(observation_deadline=1.0), **kwargs))
    if bridge is not None:
        cfg.rosbridge_port = bridge.port
    return cfg


def twin_pose_in_base(twin, q):
    """The grip-site pose at joints q, in the twin's base frame."""
    pos, rot = twin._forward_kinematics(q)
    return twin._base_rot.T @ (pos - twin._base_pos), twin._base_rot.T @ rot


def run_for(robot, action, steps: int, until=None, timeout: float = 5.0) -> None:
    """Send `action` at 20 Hz for `steps` commands, or until `until(state)` holds (within `timeout`)."""
    deadline = time.monotonic() + timeout
    for _ in range(steps if until is None else 10**6):
        start = time.monotonic()
        robot.send_action(np.asarray(action, dtype=float))
        if until is not None and (until(robot.read_state()) or start > deadline):
            return
        time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))


@pytest.fixture(params=["ros2", "rosbridge"])
def backend(request, twin):
    """Each test runs through both bridges: DDS directly, and JSON over a rosbridge websocket."""
    return request.param, request.getfixturevalue("bridge") if request.param == "rosbridge" else None


def test_observation_is_the_twins_state(backend, twin):
    name, server = backend
    with make_robot(robot_config(name, server)) as robot:
        assert robot.reset_episode(11) and twin.episode_seed == 11
        obs = robot.get_observation()
        assert obs[TASK] == "lift the red cube"
        assert obs[image_key("agentview")].shape == (96, 96, 3) and obs[image_key("wrist")].dtype == np.uint8
        assert obs[image_key("agentview")].std() > 10  # a rendered scene, not a blank frame
        assert obs[OBS_STATE].shape == (11,)
        pos, _ = twin.env.unwrapped.scene.eef_pose()  # no command since the reset: the arm is still
        np.testing.assert_allclose(obs[OBS_STATE][:3], pos, atol=2e-3)  # base frame -> policy frame


def test_eef_delta_moves_the_twin_and_the_gripper_closes(backend, twin):
    name, server = backend
    with make_robot(robot_config(name, server)) as robot:
        robot.reset_episode(12)
        start = robot.read_state()
        run_for(robot, [0.6, 0, 0, 0, 0, 0, -1], 0, until=lambda s: s.eef_pos[0] > start.eef_pos[0] + 0.03)
        moved = robot.read_state().eef_pos - start.eef_pos
        assert moved[0] > 0.03 and abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01
        run_for(robot, [0, 0, 0, 0, 0, 0, 1], 0, until=lambda s: s.gripper_width < 0.01)
        assert robot.read_state().gripper_width < 0.01
        assert all(c["kind"] == "pose" for c in twin.commands[-10:])


def test_joint_targets_move_the_joints(backend, twin):
    name, server = backend
    with make_robot(robot_config(name, server, action_space="joint_position")) as robot:
        robot.reset_episode(13)
        q0 = robot.read_state().joint_pos
        target = q0.copy()
        target[0] += 0.3  # beyond one period's joint step: the safety layer ramps it
        for _ in range(20):
            start = time.monotonic()
            sent = robot.send_action(np.concatenate([target, [-1.0]]))
            assert abs(sent[0] - robot.read_state().joint_pos[0]) <= 0.1 + 0.06
            time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
        # The twin tracks a joint target as the pose it gives (its OSC controller resolves the
        # redundant elbow its own way), so check that pose is approached.
        goal, _ = twin._forward_kinematics(target)
        before = np.linalg.norm(goal - robot.robot.to_policy_frame(*twin_pose_in_base(twin, q0))[0])
        after = np.linalg.norm(goal - robot.read_state().eef_pos)
        assert after < before - 0.02
        assert robot.read_state().joint_pos[0] > q0[0]
        assert twin.commands[-1]["kind"] == "joints"


def test_rosbridge_server_loss_stops_the_run(twin):
    from envs.robot.rosbridge_server import RosbridgeServer

    with RosbridgeServer(port=0) as server:
        robot = make_robot(robot_config("rosbridge", server))
        with robot:
            run_for(robot, [0.2, 0, 0, 0, 0, 0, -1], 3)
            server.stop()
            deadline = time.monotonic() + 2.0
            with pytest.raises(SafetyStop) as err:
                while time.monotonic() < deadline:
                    robot.read_state()
                    time.sleep(0.01)
            assert err.value.reason == "link_lost"
        server.start()  # the bridge is back: a new run connects
        with make_robot(robot_config("rosbridge", server)) as robot:
            assert robot.get_observation()[OBS_STATE].shape == (11,)


def test_unreachable_bridge_is_a_clear_error(ros_domain):
    from vla.errors import RobotError

    cfg = RobotConfig(backend="rosbridge", rosbridge_port=1, connect_timeout=2.0)
    with pytest.raises(RobotError, match="no rosbridge server at ws://127.0.0.1:1"):
        make_robot(cfg).connect()


def test_the_ros_side_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import envs.robot.ros2, envs.robot.rosbridge, envs.robot.twin, envs.robot.safety, "
            "envs.robot.rosbridge_server; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_vla_twin_and_vla_deploy_from_the_command_line(trained_run, ros_domain, tmp_path):
    """What a user types: `vla twin robot=twin` in one shell, `vla deploy robot=twin` in another."""
    import json
    import os
    import signal
    import subprocess
    import sys

    twin = subprocess.Popen([sys.executable, "-m", "vla.cli", "twin", "robot=twin", "robot.sim_seed=5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ROS_DOMAIN_ID": ros_domain}, preexec_fn=child_hears_ctrl_c)
    try:
        lines = []  # robosuite's start-up warnings come first
        while not any("digital twin: lift (seed 5)" in line for line in lines):
            line = twin.stdout.readline()
            assert line, "vla twin exited before it was up:\n" + "".join(lines)
            lines.append(line)
        out = tmp_path / "deploy"
        # The second shell is a process of its own, as for a user; in-process, a thread start inside
        # transformers' loader once hung forever in this long-lived pytest process (CI, under load).
        deploy = subprocess.run(
            [sys.executable, "-m", "vla.cli", "deploy", "robot=twin", f"deploy.checkpoint={trained_run}",
             f"deploy.output_dir={out}", "deploy.episodes=2", "deploy.max_steps=10",
             "deploy.stop_on_success=false", "robot.safety.observation_deadline=1.0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
            env={**os.environ, "ROS_DOMAIN_ID": ros_domain})
        assert deploy.returncode == 0, deploy.stdout[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["protocol"]["backend"] == "ros2" and summary["steps"] == 20
        assert summary["success_rate"] == 0.0  # the twin reports success; 10 steps cannot lift a cube
    finally:
        twin.send_signal(signal.SIGINT)
        assert twin.wait(timeout=30) == 0  # Ctrl-C stops the twin cleanly
