"""The safety layer every backend runs behind: limits, rejection, a watchdog, and a log.

`SafeRobot(robot)` has the `Robot` interface and sits between the control loop and a backend.
Every command passes through `limit`, which changes it to the nearest command inside the limits
(`SafetyConfig`) and records what it changed:

    action not finite            -> hold, stop the run (SafetyStop)
    action outside [-1, 1]       -> clipped                       (eef_delta)
    step or speed too large      -> scaled down to the limit       (relative to the measured state)
    target outside the workspace -> projected into the box          (eef_delta)
    joint target past a limit    -> clipped to limit - margin       (joint_position)
    limited max_consecutive_limited commands in a row -> hold, stop the run
    observation older than the deadline, or link lost -> hold, stop the run

A watchdog thread runs at the control rate while connected: a stale observation, a lost link
or no command for `command_deadline` holds the arm within one control period, even while the
control loop is blocked (in inference, say). Interventions go to `self.log` and, if given, to a
JSON-lines file as they happen, so the record survives a crash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot.base import Command, Robot, RobotState
from vla.errors import LinkLost, SafetyStop

logger = logging.getLogger(__name__)


@dataclass
class Intervention:
    time: float          # time.monotonic()
    command: int         # index of the command it concerns (commands sent so far)
    kind: str            # non_finite | action_range | translation_step | rotation_step | workspace |
                         # joint_limit | joint_step | gripper_range | stale_observation | link_lost |
                         # command_timeout | persistent_limit | read_error
    detail: str


class SafeRobot:
    """Wraps a backend `Robot`; same interface, every command checked. Thread-safe.

    With ``dry_run`` every check runs and every intervention is logged, but nothing is sent
    to the arm: not the commands, not the holds.
    """

    def __init__(self, robot: Robot, log_path: str | Path | None = None, *, dry_run: bool = False):
        self.robot = robot
        self.dry_run = dry_run  # compute and log every command, send none (and never hold)
        self.config = robot.config
        self.limits = robot.config.safety
        self.period = 1.0 / robot.config.control_hz
        self.log: list[Intervention] = []
        self.commands_sent = 0
        self.commands_changed = 0
        self._limited_in_a_row = 0
        self.fault: SafetyStop | None = None
        self._log_path = Path(log_path) if log_path else None
        self._lock = threading.RLock()
        self._last_command_time = time.monotonic()
        self._holding = False
        self._watchdog: threading.Thread | None = None
        self._stop_watchdog = threading.Event()

    # --- the Robot interface -------------------------------------------------------------------
    observation_features = property(lambda self: self.robot.observation_features)
    action_features = property(lambda self: self.robot.action_features)
    action_dim = property(lambda self: self.robot.action_dim)
    is_connected = property(lambda self: self.robot.is_connected)

    def connect(self) -> None:
        self.robot.connect()
        self.fault = None
        self._last_command_time = time.monotonic()
        self._stop_watchdog.clear()
        self._watchdog = threading.Thread(target=self._watch, name="vla-safety-watchdog", daemon=True)
        self._watchdog.start()

    def disconnect(self) -> None:
        self._stop_watchdog.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=2 * self.period + 1.0)
        with self._lock:
            self._safe_hold()
            self.robot.disconnect()

    def __enter__(self) -> SafeRobot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def read_state(self) -> RobotState:
        """The latest state, checked for freshness; a stale one or a lost link holds and raises SafetyStop."""
        self._raise_fault()
        try:
            state = self.robot.read_state()
        except LinkLost as e:
            self._stop("link_lost", f"link to the robot lost: {e}")
        if state.age > self.limits.observation_deadline:
            self._stop("stale_observation", f"observation is {state.age * 1000:.0f} ms old "
                       f"(deadline {self.limits.observation_deadline * 1000:.0f} ms)")
        return state

    def get_observation(self) -> dict:
        return self.robot.observation_from(self.read_state())

    def observation_from(self, state: RobotState) -> dict:
        return self.robot.observation_from(state)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Check, limit and send one action; returns the action actually sent."""
        action = np.asarray(action, dtype=np.float64)
        with self._lock:
            self._raise_fault()
            if action.shape != (self.action_dim,):
                raise ValueError(f"action: expected shape ({self.action_dim},), got {action.shape}")
            if not np.isfinite(action).all():
                self._stop("non_finite", f"non-finite action {_fmt(action)}")
            state = self.read_state()
            command, changes = self.limit(action, state)
            try:
                if not self.dry_run:
                    self.robot.send_command(command)
            except LinkLost as e:
                self._stop("link_lost", f"link to the robot lost while sending: {e}")
            for kind, detail in changes:
                self._record(kind, detail)
            limited = any(kind in _PHYSICAL_LIMITS for kind, _ in changes)
            self._limited_in_a_row = self._limited_in_a_row + 1 if limited else 0
            self.commands_sent += 1
            self.commands_changed += bool(changes)
            self._last_command_time = time.monotonic()
            self._holding = False
            if self._limited_in_a_row >= self.limits.max_consecutive_limited:
                self._stop("persistent_limit", f"the last {self._limited_in_a_row} commands all pushed against a "
                           "step, speed, workspace or joint limit")
            return self.robot.action_from(command, state)

    def hold(self) -> None:
        """Hold now (an explicit request is always sent; the watchdog's holds are sent once per stall)."""
        with self._lock:
            self._holding = False
            self._safe_hold()

    def hold_action(self, state: RobotState) -> np.ndarray:
        """The policy action that holding the arm at `state` corresponds to (no motion, the gripper as last
        commanded): what a dataset records for a step where the arm held, so the episode replays."""
        return self.robot.action_from(self.robot.hold_command(state), state)

    def rearm(self) -> None:
        """Clear a fault once the cause is dealt with (a simulated cell reset to a new episode)."""
        with self._lock:
            self.fault = None
            self._limited_in_a_row = 0
            self._last_command_time = time.monotonic()

    def task_success(self) -> bool | None:
        return self.robot.task_success()

    def reset_episode(self, seed: int) -> bool:
        return self.robot.reset_episode(seed)

    # --- limits ---------------------------------------------------------------------------------
    def limit(self, action: np.ndarray, state: RobotState) -> tuple[Command, list[tuple[str, str]]]:
        """The command for `action` with every limit applied, and a (kind, detail) per change."""
        lim, changes = self.limits, []
        if self.config.action_space == "eef_delta":
            clipped = np.clip(action, -1.0, 1.0)
            if not np.array_equal(clipped, action):
                changes.append(("action_range", f"action {_fmt(action)} clipped to [-1, 1]"))
            command = self.robot.command_from(clipped, state)
            # The box first, then the step: a target clipped into the box is still at most one
            # limited step from the measured pose (an arm outside the box walks back, slowly).
            boxed = np.clip(command.eef_pos, lim.workspace_low, lim.workspace_high)
            if not np.array_equal(boxed, command.eef_pos):
                changes.append(("workspace", f"target {_fmt(command.eef_pos)} m moved into the workspace box"))
                command.eef_pos = boxed
            # translation: per-step and speed limits, relative to the measured position
            max_step = min(lim.max_translation_step, lim.max_eef_speed * self.period)
            step = command.eef_pos - state.eef_pos
            norm = float(np.linalg.norm(step))
            if norm > max_step + 1e-9:
                command.eef_pos = state.eef_pos + step * (max_step / norm)
                changes.append(("translation_step",
                                f"step of {norm * 1000:.1f} mm limited to {max_step * 1000:.1f} mm"))
            rotvec = Rotation.from_matrix(command.eef_rot @ state.eef_rot.T).as_rotvec()
            angle = float(np.linalg.norm(rotvec))
            if angle > lim.max_rotation_step + 1e-9:
                rotvec *= lim.max_rotation_step / angle
                command.eef_rot = Rotation.from_rotvec(rotvec).as_matrix() @ state.eef_rot
                changes.append(("rotation_step", f"rotation of {angle:.3f} rad limited to {lim.max_rotation_step} rad"))
        else:
            command = self.robot.command_from(action, state)
            low = np.asarray(lim.joint_low) + lim.joint_margin
            high = np.asarray(lim.joint_high) - lim.joint_margin
            q = np.clip(command.joint_pos, low, high)
            if not np.array_equal(q, command.joint_pos):
                changes.append(("joint_limit", f"joint target {_fmt(command.joint_pos)} clipped to the limits"))
            max_step = np.minimum(lim.max_joint_step, np.asarray(lim.max_joint_velocity) * self.period)
            stepped = state.joint_pos + np.clip(q - state.joint_pos, -max_step, max_step)
            if not np.allclose(stepped, q):
                changes.append(("joint_step", f"joint step {_fmt(q - state.joint_pos)} limited to {_fmt(max_step)}"))
            command.joint_pos = stepped
        width = float(np.clip(command.gripper_width, 0.0, self.config.gripper_open_width))
        if width != command.gripper_width:
            changes.append(("gripper_range", f"gripper width {command.gripper_width} clipped"))
            command.gripper_width = width
        return command, changes

    # --- faults ---------------------------------------------------------------------------------
    def _stop(self, kind: str, message: str):
        """Hold, log, remember the fault and raise it."""
        detected = time.monotonic()
        with self._lock:
            # Hold again even if already holding (after a command timeout, say): a fault must
            # leave a hold as the last thing the arm heard, whatever happened to earlier ones.
            self._safe_hold(force=True)
            self._record(kind, message, at=detected)
            if self.fault is None:
                self.fault = SafetyStop(kind, f"safety stop ({kind}): {message}; the arm is holding")
        raise self.fault

    def _raise_fault(self) -> None:
        if self.fault is not None:
            raise self.fault

    def _safe_hold(self, force: bool = False) -> None:
        """Hold, tolerating a dead link (the robot's own controller then holds on its timeout);
        once, unless `force`."""
        if (self._holding and not force) or self.dry_run or not self.robot.is_connected:
            return
        try:
            self.robot.hold()
            self._holding = True
        except Exception as e:  # a backend's failure must not kill the watchdog thread that called it
            logger.warning("hold failed: %s: %s", type(e).__name__, e)

    def _record(self, kind: str, detail: str, at: float | None = None) -> None:
        entry = Intervention(time.monotonic() if at is None else at, self.commands_sent, kind, detail)
        self.log.append(entry)
        logger.info("safety: %s: %s", kind, detail)
        if self._log_path is not None:
            with self._log_path.open("a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")

    def _watch(self) -> None:
        """Every control period: stale observation or lost link -> hold and fault; no command -> hold."""
        while not self._stop_watchdog.wait(self.period):
            if self.fault is not None or not self.robot.is_connected:
                continue
            with self._lock:
                try:
                    self.read_state()
                except SafetyStop:
                    continue  # held and recorded; the control loop raises it on its next call
                except Exception as e:  # anything else from the backend: never let the watchdog die
                    try:
                        self._stop("read_error", f"reading the robot failed: {type(e).__name__}: {e}")
                    except SafetyStop:
                        continue
                idle = time.monotonic() - self._last_command_time
                if idle > self.limits.command_deadline and not self._holding:
                    self._record("command_timeout", f"no command for {idle * 1000:.0f} ms; holding")
                    self._safe_hold()

    def summary(self) -> dict:
        return {"commands_sent": self.commands_sent, "commands_changed": self.commands_changed,
                "interventions": dict(Counter(entry.kind for entry in self.log)),
                "fault": None if self.fault is None else str(self.fault)}


_PHYSICAL_LIMITS = {"translation_step", "rotation_step", "workspace", "joint_limit", "joint_step"}


def _fmt(x: np.ndarray) -> str:
    return np.array2string(np.asarray(x), precision=3, separator=", ")
