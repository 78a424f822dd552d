"""The driver interface, the safety layer and the sim backend (no middleware needed)."""

import json

import numpy as np
import pytest

from envs.robot import RobotConfig, make_backend, make_robot
from envs.robot.config import SafetyConfig
from vla.errors import SafetyStop
from vla.features import OBS_ENV_STATE, OBS_STATE, TASK, image_key

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("change, message", [
    (dict(backend="ros3"), "robot.backend"),
    (dict(action_space="torque"), "robot.action_space"),
    (dict(control_hz=0), "robot.control_hz"),
    (dict(base_position=[0, 0]), "base_position"),
    (dict(safety=SafetyConfig(workspace_low=[0, 0, 1], workspace_high=[1, 1, 0.5])), "workspace_low"),
    (dict(safety=SafetyConfig(observation_deadline=0)), "observation_deadline"),
])
def test_bad_robot_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        RobotConfig(**change).check()


def test_features_are_readable_while_disconnected():
    robot = make_backend(RobotConfig(backend="sim", cameras=["agentview"], image_size=64))
    assert not robot.is_connected
    assert set(robot.observation_features) == {image_key("agentview"), OBS_STATE}
    assert robot.observation_features[image_key("agentview")]["shape"] == (64, 64, 3)
    assert robot.action_features["action"]["shape"] == (7,)
    joint = make_backend(RobotConfig(backend="ros2", action_space="joint_position"))
    assert joint.action_features["action"]["shape"] == (8,)


def test_sim_backend_refuses_joint_actions():
    with pytest.raises(ValueError, match="eef_delta"):
        make_backend(RobotConfig(backend="sim", action_space="joint_position"))


def test_sim_robot_is_the_tabletop_env_step_for_step():
    """Same seed, same actions: the robot interface reproduces the env's observations exactly,
    so a checkpoint trained on the env sees the same inputs through the driver."""
    from envs.tabletop import make_env

    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-0.6, 0.6, (12, 6)), np.sign(rng.uniform(-1, 1, (12, 1)))], axis=1)
    env = make_env("lift", image_size=64, cameras=("agentview",))
    obs, _ = env.reset(seed=3)
    expected = [obs]
    for a in actions:
        expected.append(env.step(a)[0])
    env.close()
    cfg = RobotConfig(backend="sim", sim_seed=3, cameras=["agentview"], image_size=64)
    with make_backend(cfg) as robot:
        got = [robot.get_observation()]
        for a in actions:
            sent = robot.send_action(a)
            np.testing.assert_allclose(sent, a, atol=1e-5)  # the command round-trips to the same action
            got.append(robot.get_observation())
    for e, g in zip(expected, got):
        assert g[TASK] == e[TASK]
        np.testing.assert_allclose(g[OBS_STATE], e[OBS_STATE], atol=1e-6)
        np.testing.assert_array_equal(g[image_key("agentview")], e[image_key("agentview")])
        assert OBS_ENV_STATE not in g  # privileged state never leaves the simulator


def test_safety_limits_jumps_and_workspace_and_logs_them(tmp_path):
    limits = SafetyConfig(max_translation_step=0.01, max_rotation_step=0.1)
    log = tmp_path / "interventions.jsonl"
    cfg = RobotConfig(backend="sim", cameras=[], safety=limits)
    with make_robot(cfg, log_path=log) as robot:
        before = robot.read_state()
        sent = robot.send_action(np.array([1.0, 0, 0, 0, 0, 1.0, -1]))  # asks for 5 cm and 0.5 rad
        assert np.linalg.norm(sent[:3]) * cfg.translation_scale == pytest.approx(0.01, abs=1e-6)
        assert np.linalg.norm(sent[3:6]) * cfg.rotation_scale == pytest.approx(0.1, abs=1e-6)
        for _ in range(5):  # every later step moves at most the limit (plus the controller's lag)
            state = robot.read_state()
            robot.send_action(np.array([3.0, 0, 0, 0, 0, 0, -1]))
            assert np.linalg.norm(robot.read_state().eef_pos - state.eef_pos) < 0.01 + 2e-3
        assert robot.read_state().eef_pos[0] > before.eef_pos[0] + 0.008  # it did move, in the asked direction
        limits.max_translation_step = 0.05
        for _ in range(40):  # push down into the table: targets never leave the box
            state = robot.read_state()
            command, changes = robot.limit(np.array([0, 0, -1.0, 0, 0, 0, -1]), state)
            assert command.eef_pos[2] >= limits.workspace_low[2] - 1e-9
            robot.send_action(np.array([0, 0, -1.0, 0, 0, 0, -1]))
        assert robot.read_state().eef_pos[2] > limits.workspace_low[2] - 0.01
        summary = robot.summary()
    kinds = summary["interventions"]
    assert kinds["translation_step"] >= 6 and kinds["rotation_step"] == 1 and kinds["workspace"] >= 1
    assert kinds["action_range"] == 5  # the 3.0 actions
    assert summary["commands_sent"] == 46 and summary["commands_changed"] >= 7
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == sum(kinds.values()) and {e["kind"] for e in logged} == set(kinds)


def test_non_finite_action_holds_and_stops(tmp_path):
    with make_robot(RobotConfig(backend="sim", cameras=[])) as robot:
        robot.send_action(np.array([0.5, 0, 0, 0, 0, 0, -1]))
        for bad in (np.nan, np.inf):
            action = np.array([0.5, 0, bad, 0, 0, 0, -1])
            with pytest.raises(SafetyStop, match="non-finite") as err:
                robot.send_action(action)
            assert err.value.reason == "non_finite"
        assert robot.commands_sent == 1  # nothing after the fault reached the arm
        with pytest.raises(SafetyStop):  # the stop is sticky: the run must end
            robot.send_action(np.zeros(7))
        assert robot.summary()["interventions"] == {"non_finite": 1}


def test_wrong_action_shape_is_refused():
    with make_robot(RobotConfig(backend="sim", cameras=[])) as robot:
        with pytest.raises(ValueError, match=r"expected shape \(7,\)"):
            robot.send_action(np.zeros(8))


def test_watchdog_holds_when_commands_stop():
    cfg = RobotConfig(backend="sim", cameras=[], safety=SafetyConfig(command_deadline=0.1))
    with make_robot(cfg) as robot:
        robot.send_action(np.array([1.0, 0, 0, 0, 0, 0, -1]))
        steps = robot.robot.env.unwrapped._elapsed_steps
        import time

        time.sleep(0.5)
        assert robot.summary()["interventions"].get("command_timeout") == 1  # once per stall, not every period
        assert robot.robot.env.unwrapped._elapsed_steps == steps + 1  # the hold was commanded
        robot.send_action(np.array([1.0, 0, 0, 0, 0, 0, -1]))  # a new command resumes
        assert robot.robot.env.unwrapped._elapsed_steps == steps + 2


def test_a_hold_that_fails_does_not_kill_the_watchdog(monkeypatch):
    """A backend whose hold raises something unexpected (the sim rendering from the watchdog's
    thread in a GL context the control thread holds: EGL_BAD_ACCESS) leaves the watchdog running."""
    import time

    from envs.robot.sim import SimRobot

    def broken_hold(self):
        raise RuntimeError("EGL_BAD_ACCESS")

    cfg = RobotConfig(backend="sim", cameras=[], safety=SafetyConfig(command_deadline=0.1))
    with make_robot(cfg) as robot:
        monkeypatch.setattr(SimRobot, "_hold", broken_hold)
        robot.send_action(np.array([1.0, 0, 0, 0, 0, 0, -1]))
        time.sleep(0.5)
        assert robot._watchdog.is_alive()
        assert robot.summary()["interventions"].get("command_timeout", 0) >= 2  # it kept watching and retrying


def test_dry_run_sends_nothing():
    with make_robot(RobotConfig(backend="sim", cameras=[]), dry_run=True) as robot:
        before = robot.read_state().eef_pos
        for _ in range(5):
            sent = robot.send_action(np.array([5.0, 0, 0, 0, 0, 0, 1]))
            assert sent[0] == pytest.approx(1.0)
        assert robot.robot.env.unwrapped._elapsed_steps == 0
        np.testing.assert_array_equal(robot.read_state().eef_pos, before)
        assert robot.summary()["interventions"] == {"action_range": 5}


def test_hold_action_replays_as_the_hold():
    """What a dataset records for a held step, sent as an action, does what the hold did: the arm stays
    put and the gripper keeps its last command (here opening, though the fingers still measure closed)."""
    cfg = RobotConfig(backend="sim", cameras=[], safety=SafetyConfig(command_deadline=60.0))  # no watchdog holds
    with make_robot(cfg) as held, make_robot(cfg) as replayed:  # the same seed: two copies of one scene
        for robot in (held, replayed):
            for _ in range(10):
                robot.send_action(np.array([0, 0, 0, 0, 0, 0, 1.0]))  # close the gripper
            robot.send_action(np.array([0.8, 0, 0, 0, 0, 0, -1.0]))  # move and start opening
        state = replayed.read_state()
        assert state.gripper_width < 0.5 * cfg.gripper_open_width  # still measures closed
        action = replayed.hold_action(state)
        np.testing.assert_allclose(action, [0, 0, 0, 0, 0, 0, -1.0], atol=1e-6)
        held.hold()
        replayed.send_action(action)
        a, b = held.read_state(), replayed.read_state()
        for field in ("eef_pos", "eef_rot", "joint_pos", "fingers"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), atol=1e-6, err_msg=field)
