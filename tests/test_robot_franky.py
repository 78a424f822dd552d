"""The franky backend against franky-sim: a MuJoCo Franka served over the libfranka protocol.

franky-sim runs as a separate process (one per module, plus one per link-loss test, which kills
its own); it binds the first free 127.x.y.z loopback address and prints it. Every sim test starts
with the arm at rest in HOME. The simulator has no realtime flag to set: it steps MuJoCo at 1 kHz in
wall-clock time, headless unless given --render.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

franky = pytest.importorskip("franky")
pytest.importorskip("franky_sim")

# The project's imports come after the importorskips (hence E402): without franky or franky-sim the
# module is skipped before it loads the robot stack.
from envs.robot import make_backend  # noqa: E402
from envs.robot.base import Command  # noqa: E402
from envs.robot.config import PANDA_JOINT_HIGH, PANDA_JOINT_LOW, RobotConfig, SafetyConfig  # noqa: E402
from envs.robot.franky import FrankyRobot  # noqa: E402
from envs.robot.franky_sim import HOME, home_franky_sim, start_franky_sim, stop_franky_sim  # noqa: E402
from envs.robot.safety import SafeRobot  # noqa: E402
from vla.errors import LinkLost, RobotError, SafetyStop  # noqa: E402

pytestmark = pytest.mark.timeout(180)

PERIOD = 0.05  # 20 Hz, the control rate the backend is built for
start_sim, stop_sim = start_franky_sim, stop_franky_sim


class Sim:
    """One franky-sim process; restarted if it cannot bring its arm home."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.starts = log_dir, 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.proc, self.host = start_sim(self.log_dir / f"franky-sim-{self.starts}.log")

    def stop(self) -> None:
        stop_sim(self.proc)

    def home(self) -> str:
        """Move the arm to HOME (at rest) and the gripper half open; the host to connect to."""
        for attempt in range(2):
            try:
                home_franky_sim(self.host, HOME, timeout=30)
                return self.host
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                if attempt:
                    raise RuntimeError(f"franky-sim could not bring the arm home: {(e.stderr or '')[-500:]}") from None
                self.stop()  # a wedged simulator: start a fresh one
                self.start()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    sim = Sim(tmp_path_factory.mktemp("franky_sim"))
    yield sim
    sim.stop()


@pytest.fixture
def host(sim):
    """The simulator's address, its arm at rest in HOME and its gripper half open."""
    return sim.home()


def make_config(host: str, base_position=(0.0, 0.0, 0.0), **overrides) -> RobotConfig:
    """By default the policy frame is the robot's base frame; a workspace box around HOME's TCP
    (0.31, 0, 0.49 in the base frame). The observation deadline is 1 s, not 250 ms: a busy machine once
    delayed a state read by 450 ms in a test of the gripper, and no test here is about stale states."""
    base = np.asarray(base_position)
    safety = SafetyConfig(workspace_low=list(base + [0.1, -0.45, 0.1]), workspace_high=list(base + [0.8, 0.45, 0.9]),
                          command_deadline=5.0, observation_deadline=1.0, **overrides.pop("safety", {}))
    fields = dict(backend="franky", franky_host=host, cameras=[], base_position=list(base),
                  franky_dynamics_factor=0.5, safety=safety)
    return RobotConfig(**{**fields, **overrides})


def stream(robot, action, n: int) -> list[float]:
    """Send `action` n times at 20 Hz; the duration of each send_action call."""
    durations = []
    for _ in range(n):
        start = time.monotonic()
        robot.send_action(np.asarray(action, dtype=np.float64))
        durations.append(time.monotonic() - start)
        time.sleep(max(0.0, PERIOD - (time.monotonic() - start)))
    return durations


def settle(robot, timeout: float = 3.0):
    """Wait until the arm is at rest (the simulator runs slower than real time on a loaded machine)."""
    previous, still, deadline = robot.read_state(), 0, time.monotonic() + timeout
    while still < 2 and time.monotonic() < deadline:
        time.sleep(PERIOD)
        state = robot.read_state()
        moving = (np.linalg.norm(state.eef_pos - previous.eef_pos) > 1e-4
                  or np.abs(state.joint_pos - previous.joint_pos).max() > 2e-4)
        still, previous = (0 if moving else still + 1), state
    return previous


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(a @ b.T).as_rotvec()))


# --- tests that need no simulator ------------------------------------------------------------------
def test_cameras_without_a_camera_source_fail_clearly():
    robot = FrankyRobot(RobotConfig(backend="franky", franky_host="127.0.0.1", cameras=["agentview", "wrist"]))
    with pytest.raises(RobotError, match="camera_source") as info:
        robot.connect()
    message = str(info.value)
    assert "\n" not in message and "franky has no cameras" in message and "cameras=[]" in message
    assert not robot.is_connected


def test_a_bad_control_option_fails_clearly():
    with pytest.raises(ValueError, match=r"robot.franky_control='impedance'; choose one of \['motion', 'tracker'\]"):
        FrankyRobot(RobotConfig(backend="franky", cameras=[], franky_control="impedance"))
    with pytest.raises(ValueError, match=r"control='Tracker'; choose one of \['motion', 'tracker'\]"):
        FrankyRobot(RobotConfig(backend="franky", cameras=[]), control="Tracker")
    # the tracker is a Cartesian controller: joint-position actions need control="motion"
    with pytest.raises(ValueError, match="joint_position"):
        FrankyRobot(RobotConfig(backend="franky", cameras=[], action_space="joint_position", franky_control="tracker"))
    # the config field reaches the backend that make_robot builds; the constructor argument overrides it
    assert make_backend(RobotConfig(backend="franky", cameras=[], franky_control="tracker")).control == "tracker"
    assert FrankyRobot(RobotConfig(backend="franky", cameras=[], franky_control="tracker"), control="motion").control \
        == "motion"
    assert FrankyRobot(RobotConfig(backend="franky", cameras=[])).control == "motion"  # the default


def test_the_backend_does_not_import_torch():
    code = "import sys, envs.robot.franky, franky; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- against the simulator -------------------------------------------------------------------------
def test_connect_reads_a_plausible_state(host):
    offset = [0.0, 0.0, np.pi / 2]
    config = make_config(host, base_position=[-0.56, 0.0, 0.912], ee_rotation_offset=offset)
    with FrankyRobot(config) as robot:
        state = robot.read_state()
        raw = robot._robot.current_cartesian_state.pose.end_effector_pose  # O_T_EE, base frame
        assert state.joint_pos.shape == (7,)
        np.testing.assert_allclose(state.joint_pos, HOME, atol=0.01)
        assert np.all(state.joint_pos > PANDA_JOINT_LOW) and np.all(state.joint_pos < PANDA_JOINT_HIGH)
        # the TCP pose, mapped into the policy frame by base_position and ee_rotation_offset
        np.testing.assert_allclose(state.eef_pos, np.asarray(raw.translation) + [-0.56, 0.0, 0.912], atol=1e-3)
        expected_rot = Rotation.from_quat(raw.quaternion).as_matrix() @ Rotation.from_rotvec(offset).as_matrix()
        assert angle_between(state.eef_rot, expected_rot) < 1e-3
        np.testing.assert_allclose(state.eef_rot @ state.eef_rot.T, np.eye(3), atol=1e-6)
        assert 0.3 < np.linalg.norm(np.asarray(raw.translation)) < 0.9  # a Panda TCP in reach
        assert abs(state.gripper_width - 0.04) < 0.005
        assert 0.0 <= state.age < 5.0  # a state just read (not a timing claim: the machine may be busy)
        obs = robot.get_observation()
        assert set(obs) == {"observation.state", "task"}
        assert obs["observation.state"].shape == (11,) and obs["observation.state"].dtype == np.float32


def test_the_calling_thread_keeps_its_scheduling(host):
    """franky.Robot raises its calling thread to SCHED_FIFO 99 wherever it may (here, as root). The
    backend and the simulator's start-up give it back: otherwise the policy's thread and every
    thread and process it starts afterwards run at top realtime priority and starve the machine."""
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # start_franky_sim has connected once already
    with FrankyRobot(make_config(host)) as robot:
        stream(robot, [0, 0.1, 0, 0, 0, 0, 0], 2)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.sched_getparam(0).sched_priority == 0
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_eef_delta_moves_the_tcp_by_the_commanded_step(host):
    with SafeRobot(FrankyRobot(make_config(host))) as robot:
        start = robot.read_state()
        n, step = 8, 0.1 * 0.05  # action 0.1 in +y = 5 mm per command (0.1 m/s at 20 Hz)
        durations = stream(robot, [0, 0.1, 0, 0, 0, 0, 0], n - 1)
        last = robot.read_state()
        durations += stream(robot, [0, 0.1, 0, 0, 0, 0, 0], 1)
        end = settle(robot)
        moved = end.eef_pos - start.eef_pos
        # Each command targets measured + step, and franky plans every target from the current motion
        # to rest, so the arm covers less than n * step while streaming (about 85 % here).
        assert 0.3 * n * step < moved[1] < 1.1 * n * step, moved
        assert abs(moved[0]) < 0.002 and abs(moved[2]) < 0.002, moved
        # ... and comes to rest on the last target
        np.testing.assert_allclose(end.eef_pos, last.eef_pos + [0, step, 0], atol=1.5e-3)
        assert angle_between(end.eef_rot, start.eef_rot) < 0.01
        assert robot.summary()["commands_changed"] == 0 and robot.fault is None
        assert max(durations) < 0.1  # nothing blocks the 20 Hz loop


def test_eef_delta_rotates_the_tcp_in_the_policy_frame(host):
    # The tabletop's frames: the base away from the policy frame's origin, and a rotation offset
    # between the robot's EE frame and the policy's. The commanded rotation is about the policy
    # frame's z axis (parallel to the base's) whatever the offset, and the position stays.
    config = make_config(host, base_position=[-0.56, 0.0, 0.912], ee_rotation_offset=[0.0, 0.4, 0.0])
    with SafeRobot(FrankyRobot(config)) as robot:
        start = robot.read_state()
        n, step = 5, 0.08 * 0.5  # 0.04 rad about +z per command
        stream(robot, [0, 0, 0, 0, 0, 0.08, 0], n - 1)
        last = robot.read_state()
        stream(robot, [0, 0, 0, 0, 0, 0.08, 0], 1)
        end = settle(robot)
        rotvec = Rotation.from_matrix(end.eef_rot @ start.eef_rot.T).as_rotvec()
        # rotation lags more than translation (about 50 % of n * step here)
        assert 0.1 * n * step < np.linalg.norm(rotvec) < 1.1 * n * step, rotvec
        assert rotvec[2] > 0 and np.linalg.norm(rotvec[:2]) < 0.01, rotvec
        # ... and comes to rest on the last target: the measured rotation turned by `step` about z
        expected = Rotation.from_rotvec([0, 0, step]).as_matrix() @ last.eef_rot
        assert angle_between(end.eef_rot, expected) < 0.005
        assert np.linalg.norm(end.eef_pos - start.eef_pos) < 0.003


def test_joint_position_action_moves_the_joints(host):
    with SafeRobot(FrankyRobot(make_config(host, action_space="joint_position"))) as robot:
        q0 = robot.read_state().joint_pos.copy()
        direction = np.array([1.0, 0, 0, 0, 0, 0, -1.0])
        target = q0 + 0.2 * direction
        stream(robot, np.r_[target, 0.0], 4)
        q = robot.read_state().joint_pos
        assert np.all((q - q0)[[0, 6]] * direction[[0, 6]] > 0.001), q - q0  # under way, both joints
        # The safety layer lets each command ask for at most max_joint_step beyond the measured
        # joints, so the target is reached over several commands.
        for _ in range(100):
            if np.abs(robot.read_state().joint_pos - target).max() < 0.005:
                break
            stream(robot, np.r_[target, 0.0], 1)
        np.testing.assert_allclose(settle(robot).joint_pos, target, atol=0.005)
        assert {e.kind for e in robot.log} <= {"joint_step"}


def test_the_gripper_closes_and_opens_without_blocking(host):
    with SafeRobot(FrankyRobot(make_config(host))) as robot:
        def drive(value: float, done, timeout: float = 4.0) -> list[float]:
            durations, deadline = [], time.monotonic() + timeout
            while not done(robot.read_state().gripper_width) and time.monotonic() < deadline:
                durations += stream(robot, [0, 0, 0, 0, 0, 0, value], 1)
            return durations

        durations = drive(+1.0, lambda w: w < 0.005)
        assert robot.read_state().gripper_width < 0.005
        durations += drive(-1.0, lambda w: w > 0.075)
        assert robot.read_state().gripper_width > 0.075
        # a reversal while the gripper is moving: the new target follows once the running command ends
        durations += drive(+1.0, lambda w: w < 0.06)
        durations += drive(-1.0, lambda w: w > 0.075)
        assert robot.read_state().gripper_width > 0.075
        # a blocking send_action would last the gripper move itself (~0.5 s); the margin tolerates a busy machine
        assert max(durations) < 0.4, max(durations)


def count_moves(backend: FrankyRobot) -> list[str]:
    """The type of every motion the backend starts from now on (undone by `del backend._robot.move`)."""
    moves, original = [], backend._robot.move
    backend._robot.move = lambda motion, **kw: (moves.append(type(motion).__name__), original(motion, **kw))[1]
    return moves


def test_a_target_the_arm_already_holds_starts_no_motion(host):
    """Each motion restarts franky's planner, which can fail on a micrometre move (error -111)."""
    with FrankyRobot(make_config(host)) as robot:
        moves = count_moves(robot)
        try:
            stream(robot, [0, 0, 0, 0, 0, 0, 0], 5)  # at rest: "stay" is the pose it holds
            assert moves == []
            stream(robot, [0.1, 0, 0, 0, 0, 0, 0], 1)
            assert moves == ["CartesianMotion"]
            # the command again from the same state is the target of the running motion: not resent
            robot.send_command(robot.command_from(np.array([0.1, 0, 0, 0, 0, 0, 0]), robot._last_state))
            assert moves == ["CartesianMotion"]
        finally:
            del robot._robot.move


def test_the_safety_layer_limits_a_huge_jump(host):
    limit = 0.02
    config = make_config(host, translation_scale=0.5, safety={"max_translation_step": limit})
    with SafeRobot(FrankyRobot(config)) as robot:
        p0 = robot.read_state().eef_pos.copy()
        sent = robot.send_action(np.array([-1.0, 0, 0, 0, 0, 0, 0]))  # asks for 0.5 m in -x
        p1 = settle(robot).eef_pos.copy()
        assert 0.5 * limit < np.linalg.norm(p1 - p0) < limit + 0.002
        assert p1[0] < p0[0]
        np.testing.assert_allclose(sent[:3], [-limit / 0.5, 0, 0], atol=1e-4)
        # 0.5 m away is also outside the box: clipped into it, then limited to one step
        assert [e.kind for e in robot.log][-1] == "translation_step"
        assert {e.kind for e in robot.log} <= {"workspace", "translation_step"}
        robot.send_action(np.array([-1.0, 0, 0, 0, 0, 0, 0]))
        p2 = settle(robot).eef_pos
        assert np.linalg.norm(p2 - p1) < limit + 0.002


def send_far(robot, backend, offset) -> np.ndarray:
    """Send `backend` (unchecked) a target `offset` away and return once the arm is 1 cm on its way."""
    start = robot.read_state()
    target = start.eef_pos + offset
    backend.send_command(Command(gripper_width=backend.last_gripper_width, eef_pos=target, eef_rot=start.eef_rot))
    deadline = time.monotonic() + 2.0
    while np.linalg.norm(robot.read_state().eef_pos - start.eef_pos) < 0.01 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert np.linalg.norm(robot.read_state().eef_pos - start.eef_pos) > 0.01  # on its way
    return target


def test_hold_stops_the_arm_where_it_is(host):
    with FrankyRobot(make_config(host)) as robot:
        robot.hold()  # nothing running: nothing to do
        target = send_far(robot, robot, [0.15, 0.0, 0.0])
        robot.hold()
        held = robot.read_state().eef_pos.copy()
        time.sleep(0.5)
        later = robot.read_state().eef_pos
        assert np.linalg.norm(later - held) < 0.005
        assert np.linalg.norm(later - target) > 0.05  # it did not go on to the target
        robot.hold()


def test_cameras_come_from_the_camera_source(host):
    class Source:
        reads = 0

        def read(self):
            self.reads += 1
            if self.reads <= 3:  # no frames yet: connect() waits for them
                return {}
            return {"agentview": np.full((120, 160, 3), 7, np.uint8), "wrist": np.zeros((64, 64, 3), np.uint8)}

    source = Source()
    with FrankyRobot(make_config(host, cameras=["agentview", "wrist"], image_size=64), camera_source=source) as robot:
        obs = robot.get_observation()
        assert obs["observation.images.agentview"].shape == (64, 64, 3)
        assert obs["observation.images.agentview"].dtype == np.uint8
        assert np.all(obs["observation.images.agentview"] == 7)
        assert obs["observation.images.wrist"].shape == (64, 64, 3)
        assert source.reads > 3


@pytest.mark.parametrize("control", ["motion", "tracker"])
def test_franky_errors_map_to_robot_errors(host, control):
    def raiser(error):
        def move(*args, **kwargs):
            raise error
        return move

    with FrankyRobot(make_config(host, franky_control=control)) as robot:
        step = np.array([0.2, 0, 0, 0, 0, 0, 0])  # a real motion: a "stay" command starts none
        reflex = franky.ControlException('libfranka: Move command aborted: motion aborted by reflex! '
                                         '["cartesian_reflex"]\ncontrol_command_success_rate: 0.92')
        robot._robot.move = raiser(reflex)  # franky.Robot is a Python class: the instance attribute wins
        with pytest.raises(RobotError, match="cartesian_reflex") as info:
            robot.send_action(step)
        assert not isinstance(info.value, LinkLost) and "\n" not in str(info.value)
        robot.read_state()  # a control error leaves the link usable

        robot._robot.move = raiser(franky.NetworkException("libfranka: UDP receive: Timeout"))
        with pytest.raises(LinkLost, match="UDP receive"):
            robot.send_action(step)
        with pytest.raises(LinkLost):  # and the link stays lost until the next connect
            robot.read_state()
        del robot._robot.move


# --- control="tracker": one streaming Cartesian impedance controller ---------------------------------
def test_tracker_streams_eef_deltas_through_one_controller(host):
    with SafeRobot(FrankyRobot(make_config(host, franky_control="tracker"))) as robot:
        backend = robot.robot
        moves = count_moves(backend)
        try:
            stream(robot, [0, 0, 0, 0, 0, 0, 0], 3)  # "stay" at rest starts nothing
            assert moves == []
            start = robot.read_state()
            n, step = 8, 0.1 * 0.05  # action 0.1 in +y = 5 mm per command (0.1 m/s at 20 Hz)
            durations = stream(robot, [0, 0.1, 0, 0, 0, 0, 0], n - 1)
            last = robot.read_state()
            durations += stream(robot, [0, 0.1, 0, 0, 0, 0, 0], 1)
            # one long-lived torque controller, its reference moved by every command
            assert moves == ["CartesianImpedanceTrackingMotion"]
            assert backend._robot.current_control_signal_type == franky.ControlSignalType.Torques
            end = settle(robot)
            moved = end.eef_pos - start.eef_pos
            # each reference is measured + step and the impedance pulls toward it, so the arm covers less
            # than n * step while streaming (about half here)
            assert 0.3 * n * step < moved[1] < 1.1 * n * step, moved
            assert abs(moved[0]) < 0.002 and abs(moved[2]) < 0.002, moved
            # ... and comes to rest toward the last reference: short of it by the force that franky-sim's joint
            # friction takes (about 2 mm at 3000 N/m), never beyond it
            ahead = end.eef_pos[1] - last.eef_pos[1]
            assert 0.2 * step < ahead < step + 0.001, ahead
            assert angle_between(end.eef_rot, start.eef_rot) < 0.01
            assert robot.summary()["commands_changed"] == 0 and robot.fault is None
            assert max(durations) < 0.1  # nothing blocks the 20 Hz loop
            # a joint-position command has no place in a Cartesian impedance controller
            with pytest.raises(RobotError, match="joint-position command with control='tracker'"):
                backend.send_command(Command(gripper_width=backend.last_gripper_width, joint_pos=end.joint_pos))
        finally:
            del backend._robot.move
        raw = backend._robot
    assert not raw.is_in_control  # disconnecting ended torque control
    del raw  # franky-sim serves the next connection only once this one is released


def test_tracker_hold_keeps_the_arm_where_it_is_and_a_later_command_resumes(host):
    with SafeRobot(FrankyRobot(make_config(host, franky_control="tracker"))) as robot:
        backend = robot.robot
        target = send_far(robot, backend, [0.05, 0.0, 0.0])  # one full-scale step, sent past the safety layer
        robot.hold()
        held = robot.read_state().eef_pos.copy()
        # The reference is now the pose of the hold: the arm, at speed, swings past it (franky damps with
        # 2 sqrt(stiffness), under-critical for the arm's mass) and comes back to rest there. (How far it
        # swings is not asserted: on a loaded machine the hold can come when the arm is nearly there.)
        previous = settle(robot, timeout=5.0).eef_pos.copy()
        assert np.linalg.norm(previous - held) < 0.005, previous - held  # back where the hold came
        assert previous[0] < target[0] - 0.002 or np.linalg.norm(held - target) < 0.005  # not on to the target
        time.sleep(0.3)
        assert np.linalg.norm(robot.read_state().eef_pos - previous) < 0.001  # and stays there
        # a later command moves the same controller's reference again, from where the arm is
        moves = count_moves(backend)
        try:
            resumed = robot.read_state()
            stream(robot, [0, 0.1, 0, 0, 0, 0, 0], 6)
            end = settle(robot)
            assert moves == []
        finally:
            del backend._robot.move
        moved = end.eef_pos - resumed.eef_pos
        assert 0.3 * 6 * 0.005 < moved[1] < 1.1 * 6 * 0.005, moved
        assert abs(moved[0]) < 0.003 and abs(moved[2]) < 0.003, moved


def test_tracker_restarts_after_it_ended_with_an_error(host):
    with FrankyRobot(make_config(host, franky_control="tracker")) as robot:
        step = np.array([0.2, 0, 0, 0, 0, 0, 0])
        stream(robot, step, 3)  # (a stop within milliseconds of the start does not reach the control loop)
        assert robot._robot.is_in_control
        robot._robot.stop()  # libfranka ends the controller with a ControlException, as a reflex would
        deadline = time.monotonic() + 2.0
        while robot._robot.is_in_control and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not robot._robot.is_in_control
        with pytest.raises(RobotError, match="preempted") as info:  # the error is not swallowed by set_reference
            robot.send_action(step)
        assert not isinstance(info.value, LinkLost) and "\n" not in str(info.value)
        start = robot.read_state()
        robot.send_action(step)  # the next command starts a new controller
        assert robot._robot.is_in_control
        time.sleep(0.3)
        assert robot.read_state().eef_pos[0] - start.eef_pos[0] > 0.003


@pytest.mark.parametrize("control, moving", [("motion", True), ("motion", False), ("tracker", True)],
                         ids=["streaming", "idle", "tracker-streaming"])
def test_killing_the_simulator_stops_the_run(tmp_path, control, moving):
    proc, host = start_sim(tmp_path / "franky-sim.log")
    try:
        robot = SafeRobot(FrankyRobot(make_config(host, franky_control=control)))
        robot.connect()
        if moving:  # in a motion franky serves the control thread's last state, which then freezes
            stream(robot, [0, 0.1, 0, 0, 0, 0, 0], 4)
        else:  # outside one, a read waits for the next state message, up to libfranka's 1 s timeout
            robot.read_state()
        stop_sim(proc)
        killed = time.monotonic()
        with pytest.raises((SafetyStop, LinkLost)) as info:
            while time.monotonic() - killed < 10.0:
                if moving:
                    robot.send_action(np.array([0, 0.1, 0, 0, 0, 0, 0]))
                else:
                    robot.read_state()
                time.sleep(PERIOD)
        # During a motion the frozen state is noticed within link_timeout (0.1 s); outside one
        # libfranka's own receive timeout (1 s per read) decides.
        assert time.monotonic() - killed < (0.5 if moving else 3.0)
        if isinstance(info.value, SafetyStop):
            assert info.value.reason == "link_lost", info.value
        start = time.monotonic()
        robot.disconnect()
        assert time.monotonic() - start < 5.0
    finally:
        stop_sim(proc)
