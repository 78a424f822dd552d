"""The `franky` backend: a Franka arm and hand through franky-control (libfranka), no ROS.

    robot = FrankyRobot(RobotConfig(backend="franky", franky_host="172.16.0.2", cameras=[]))

How the four primitives map onto franky 2.0:

    _connect  franky.Robot(host, relative_dynamics_factor=config.franky_dynamics_factor, realtime_config=...)
              and franky.Gripper(host); any errors left from an earlier session are cleared with
              robot.recover_from_errors(). Realtime: RealtimeConfig.Ignore for a loopback host (the
              franky-sim simulator, which needs it), Enforce otherwise; override with `realtime=`.
    _read     robot.state (q, O_T_EE, time) and the gripper width. Outside a motion franky reads a
              fresh state (libfranka readOnce); inside one it returns the control thread's latest
              state, which stops changing if the link dies, so a state whose robot time has not
              advanced for `link_timeout` seconds raises LinkLost.
    _send     by `control` (config.franky_control, or the constructor's `control=`):
              "motion" (the default): an absolute CartesianMotion (pose commands) or JointMotion (joint
              commands), started with robot.move(..., asynchronous=True) and return_when_finished=False:
              each new motion takes over from the running one (franky replans with Ruckig from the
              current state, within franky_dynamics_factor of Franka's limits), and if commands stop the
              arm holds the last target. A target the arm already holds starts none.
              "tracker": one franky.CartesianImpedanceTrackingMotion (a torque-level Cartesian impedance
              controller running in franky's control thread), started by the first command that moves
              the arm; every later command only moves its reference (set_reference). Stiffness
              `tracker_stiffness`, 3000 N/m and 300 Nm/rad by default; the pose error it acts on is
              clipped to 3 cm / 0.1 rad, which bounds the force on a far reference. Cartesian poses
              only: a joint-position action space is refused when the backend is made, and a joint
              command raises RobotError (it is not sent some other way behind the tracker's back). A
              tracker that ended without a hold (a reflex) raises its error on the next command, and
              the command after that starts a new one (which fails too until the error is recovered).
    _hold     motion: the stop motion of the running control type (CartesianStopMotion /
              JointStopMotion): a jerk-limited stop at the current pose. Nothing to do when no motion
              runs (the robot holds position by itself while idle).
              tracker: the reference to the measured pose; the controller keeps running and holds the
              arm there, and the next command moves the reference on. A moving arm swings past the
              pose of the hold and back (franky damps with 2 sqrt(stiffness), under-critical for the
              arm's mass: in franky-sim, a hold 1 cm into a 5 cm jump of the reference swung 2.5 cm past
              and was back within a second). Not franky's TorqueStopMotion: it ramps the controller's
              last torque out over 0.2 s, which carried franky-sim's arm 5-10 cm past the hold.
              Disconnecting holds, waits (up to 1 s) for the arm to come to rest, then ends torque
              control with TorqueStopMotion.

Which control, measured (benchmarks/franky_tracking.py: franky-sim, a 3.25 s path of 20 Hz deltas of 0.5-5 cm
per step through send_action, state read each period; mean of 3 runs; ratio = achieved / commanded step):

    control                        per step  rotation  final error vs the summed path (closed path)
    motion, dynamics factor 0.2      0.35      0.05      68 mm
    motion, dynamics factor 0.5      0.54      0.28      65 mm
    tracker, 500 N/m (franky's)      0.13      0.12      14 mm
    tracker, 3000 N/m (default)      0.51      0.30      13 mm

Both under-achieve each delta, the motion because every target is planned to rest from the
current motion, the tracker because its pull is stiffness x (reference - measured) = stiffness x
step, so it achieves a steady fraction of each step at every speed (hence its small error on a
closed path) while the motion achieves more of slow steps and less of fast ones. The tracker beats
the motion at franky_dynamics_factor 0.2 (configs/robot/franky.yaml) but not at 0.5, and it fails
three of the motion's tests (joint actions, "a held target starts no motion", and the hold that
swings past), so "motion" stays the default; choose "tracker" for smooth Cartesian streaming.

The gripper runs on two threads of this backend, so the control loop never waits for it: a reader
(`Gripper.state` blocks until the hand's next state message, which a real Franka Hand sends at
only about 10-15 Hz) and a commander that runs one blocking `grasp`/`move` at a time, always the
newest target. A target within `gripper_tolerance` of the last one sent, or of the measured width
(the "keep" command of the binary gripper action), sends nothing; a closing target (width at most
`gripper_tolerance`) is a force-controlled `grasp`, anything else a `move` to that width. franky's
own `*_async` gripper calls are not used because each one blocks until the previous gripper
command has finished.

franky has no cameras: with ``config.cameras`` set, pass a `camera_source`, any object whose
``read()`` returns ``{camera: (H, W, 3) uint8 RGB}`` with the latest frames; images are resized to
``config.image_size``.

Errors: franky/libfranka network errors (NetworkException, and Poco's "Net Exception" that
libfranka lets through as a RuntimeError) raise LinkLost, and the link stays lost until the next
connect; control errors (ControlException: reflexes, limit violations) and command errors raise
RobotError. After a reflex the arm stays stopped until `recover()` or a reconnect.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any, Protocol

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot.base import Command, Robot, RobotState, square_image
from envs.robot.config import FRANKY_CONTROLS, RobotConfig
from vla.errors import LinkLost, NotYet, RobotError
from vla.scheduling import keeps_thread_scheduling  # franky.Robot raises its calling thread to FIFO 99

logger = logging.getLogger(__name__)

# A new arm target closer than this to the one the arm holds is not sent (see FrankyRobot._adds_nothing).
TARGET_TOLERANCE_M = 1e-5
TARGET_TOLERANCE_RAD = 1e-4
# control="tracker": Cartesian stiffness (N/m, Nm/rad) of the impedance controller (libfranka's default Cartesian
# impedance; franky's own default, 500 N/m and 50 Nm/rad, achieves a quarter as much of each 20 Hz delta), and the
# largest pose error (m, rad per axis) it acts on, which bounds the force on a far reference: with franky's default
# (0.1 m) a 10 cm jump of the reference threw franky-sim's arm about; at 3 cm it settled within 5 mm.
TRACKER_STIFFNESS = (3000.0, 300.0)
TRACKER_ERROR_CLIP = (0.03, 0.1)


class CameraSource(Protocol):
    def read(self) -> dict[str, np.ndarray]:
        """The latest frame of each camera: {camera: (H, W, 3) uint8 RGB}."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class FrankyRobot(Robot):
    """A Franka arm and hand through franky-control; see the module docstring."""

    def __init__(self, config: RobotConfig, camera_source: CameraSource | None = None, *,
                 control: str | None = None, tracker_stiffness: tuple[float, float] = TRACKER_STIFFNESS,
                 realtime: bool | None = None, link_timeout: float = 0.1, gripper_speed: float = 0.1,
                 gripper_force: float = 20.0, gripper_tolerance: float = 0.005):
        """
        camera_source      required when config.cameras is non-empty (franky has no cameras)
        control            "motion" or "tracker" (see the module docstring); None: config.franky_control
        tracker_stiffness  (N/m, Nm/rad) of the tracker's Cartesian impedance (control="tracker")
        realtime           True: libfranka's RealtimeConfig.Enforce (needs a realtime kernel); False:
                           Ignore; None: Ignore for a loopback host (a simulator), Enforce otherwise
        link_timeout       s without a new robot state (during a motion) before the link counts as lost;
                           keep it below safety.observation_deadline
        gripper_speed      m/s for gripper moves and grasps
        gripper_force      N for a grasp (closing)
        gripper_tolerance  m: width changes below this send no gripper command
        """
        super().__init__(config)
        self.control = config.franky_control if control is None else control
        if self.control not in FRANKY_CONTROLS:
            raise ValueError(f"FrankyRobot: control={self.control!r}; choose one of {list(FRANKY_CONTROLS)}")
        if self.control == "tracker" and config.action_space != "eef_delta":
            raise ValueError(f"FrankyRobot: control='tracker' streams Cartesian poses; robot.action_space="
                             f"{config.action_space!r} needs control='motion' (robot.franky_control=motion)")
        self.tracker_stiffness = (float(tracker_stiffness[0]), float(tracker_stiffness[1]))
        self.camera_source = camera_source
        self.realtime = realtime
        self.link_timeout = link_timeout
        self.gripper_speed = gripper_speed
        self.gripper_force = gripper_force
        self.gripper_tolerance = gripper_tolerance
        self._franky: Any = None
        self._robot: Any = None
        self._gripper: Any = None
        self._lock = threading.Lock()
        self._gripper_wake = threading.Condition(self._lock)
        self._stopping = threading.Event()  # one per connection: ends that connection's gripper threads
        self._threads: list[threading.Thread] = []
        self._reset_link_state()

    def _reset_link_state(self) -> None:
        self._lost: str | None = None               # why the link is gone; sticky until reconnect
        self._arm_time: int | None = None           # robot clock (ms) of the latest state seen
        self._arm_seen = 0.0                        # time.monotonic() when that state was first seen
        self._gripper_reading: tuple[float, float] | None = None  # width (m), time.monotonic()
        self._gripper_link_error: LinkLost | None = None
        self._gripper_command_error: RobotError | None = None
        self._gripper_pending: float | None = None  # newest target the commander has not started
        self._gripper_sent: float | None = None     # last target handed to the commander
        self._complete = False                      # a complete observation has been read
        self._arm_target: tuple[str, np.ndarray] | None = None  # the running motion's target, base frame
        self._tracker: Any = None                   # the running CartesianImpedanceTrackingMotion, if any

    # --- lifecycle ------------------------------------------------------------------------------
    def _connect(self) -> None:
        cfg = self.config
        if cfg.cameras and self.camera_source is None:
            raise RobotError(f"franky backend: robot.cameras={list(cfg.cameras)} but franky has no cameras; pass "
                             f"FrankyRobot(config, camera_source=...) (an object whose read() returns "
                             f"{{camera: HxWx3 uint8}}) or set robot.cameras=[]")
        try:
            import franky
        except ImportError as e:
            raise RobotError(f"the franky backend needs franky-control (pip install franky-control): {e}") from None
        self._franky = franky
        self._reset_link_state()
        host = cfg.franky_host
        realtime = self.realtime if self.realtime is not None else not _is_loopback(host)
        rt_config = franky.RealtimeConfig.Enforce if realtime else franky.RealtimeConfig.Ignore
        robot = gripper = None
        try:
            with keeps_thread_scheduling():
                robot = franky.Robot(host, relative_dynamics_factor=cfg.franky_dynamics_factor,
                                     realtime_config=rt_config)
                robot.relative_dynamics_factor = cfg.franky_dynamics_factor
                if robot.has_errors and not robot.recover_from_errors():
                    raise RobotError(f"franky: the robot at {host} reports errors that automatic error recovery "
                                     f"could not clear (check the user stop and Desk)")
                gripper = franky.Gripper(host)
        except Exception as e:
            del robot, gripper
            raise self._error(e, f"connecting to {host}") from None
        self._robot, self._gripper = robot, gripper
        self._stopping = stop = threading.Event()
        self._threads = [threading.Thread(target=target, args=(gripper, stop), name=name, daemon=True)
                         for target, name in ((self._gripper_reader, "franky-gripper-state"),
                                              (self._gripper_commander, "franky-gripper-command"))]
        for thread in self._threads:
            thread.start()

    def _disconnect(self) -> None:
        try:
            self._hold()
            if self._robot is not None and self.control == "tracker" and not self._lost:
                self._end_tracking()
        except RobotError as e:
            logger.warning("hold on disconnect failed: %s", e)
        except Exception as e:
            logger.warning("%s", self._error(e, "ending the tracking motion"))
        robot = self._robot
        if robot is not None and not self._lost:
            try:
                robot.join_motion(timeout=2.0)
            except Exception as e:  # an error of the finished motion: nothing left to do about it
                logger.warning("%s", self._error(e, "finishing the last motion"))
        self._stopping.set()
        with self._gripper_wake:
            self._gripper_wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=1.5)  # the gripper reader may be inside a 1 s libfranka receive timeout
        self._threads = []
        # Threads still running keep their own references; franky joins its control thread on release.
        self._robot = self._gripper = None

    def recover(self) -> None:
        """Franka's automatic error recovery (after a reflex); raises RobotError if errors remain."""
        self._require_connected()
        if self._tracker is not None and not self._robot.is_in_control:
            self._tracker = self._arm_target = None  # ended by the error being recovered from: the next command
            try:                                     # starts a new one, and does not raise the old error again
                self._robot.join_motion(timeout=0.0)
            except Exception as e:
                logger.info("%s", self._error(e, "ending the tracking motion"))
        try:
            ok = self._robot.recover_from_errors()
        except Exception as e:
            raise self._error(e, "recovering from errors") from None
        if not ok:
            raise RobotError("franky: errors remain after automatic error recovery (check the user stop and Desk)")

    # --- primitives -----------------------------------------------------------------------------
    def _read(self) -> RobotState:
        self._check_link()
        try:
            state = self._robot.state
        except Exception as e:
            raise self._error(e, "reading the robot state") from None
        now = time.monotonic()
        robot_time = state.time.to_msec()
        with self._lock:
            if robot_time != self._arm_time:
                self._arm_time, self._arm_seen = robot_time, now
            elif now - self._arm_seen > self.link_timeout:
                self._lost = (f"franky: no new state from the robot at {self.config.franky_host} for "
                              f"{now - self._arm_seen:.2f} s")
                raise LinkLost(self._lost)
            arm_stamp = self._arm_seen
            gripper, gripper_error = self._gripper_reading, self._gripper_link_error
        if gripper_error is not None:
            self._lost = str(gripper_error)
            raise gripper_error
        if gripper is None:
            raise NotYet("no gripper state yet")
        images = self._read_images()
        pose = np.asarray(state.O_T_EE.matrix, dtype=np.float64)
        eef_pos, eef_rot = self.to_policy_frame(pose[:3, 3], pose[:3, :3])
        self._complete = True
        return RobotState(stamp=min(arm_stamp, gripper[1]), joint_pos=np.asarray(state.q, dtype=np.float64).reshape(7),
                          eef_pos=eef_pos, eef_rot=eef_rot, gripper_width=gripper[0], images=images)

    def _send(self, command: Command) -> None:
        self._check_link()
        franky = self._franky
        if command.joint_pos is not None:
            kind, target = "joint", np.asarray(command.joint_pos, dtype=np.float64).reshape(7)
        else:
            pos, rot = self.to_base_frame(command.eef_pos, command.eef_rot)
            kind, target = "pose", np.concatenate([np.asarray(pos, dtype=np.float64).reshape(3),
                                                   Rotation.from_matrix(rot).as_rotvec()])
        if self.control == "tracker":
            if kind == "joint":
                raise RobotError("franky: a joint-position command with control='tracker' (a Cartesian impedance "
                                 "controller); use control='motion' (robot.franky_control=motion) for joint commands")
            try:
                self._track(target)
            except Exception as e:
                raise self._error(e, "tracking a target") from None
            self._command_gripper(float(command.gripper_width))
            return
        try:
            if not self._adds_nothing(kind, target):
                if kind == "joint":
                    signal = franky.ControlSignalType.JointPositions
                    motion = franky.JointMotion(target, franky.ReferenceType.Absolute, return_when_finished=False)
                else:
                    signal = franky.ControlSignalType.CartesianPose
                    motion = franky.CartesianMotion(self._affine(target), franky.ReferenceType.Absolute,
                                                    return_when_finished=False)
                running = self._robot.current_control_signal_type
                if running is not None and running != signal:
                    # franky cannot switch control types mid-motion: stop the running one first.
                    self._stop_motion(running)
                    self._robot.join_motion(timeout=2.0)
                self._arm_target = None  # unknown until the new motion has started
                self._robot.move(motion, asynchronous=True)
                self._arm_target = (kind, target)
        except Exception as e:
            raise self._error(e, "starting a motion") from None
        self._command_gripper(float(command.gripper_width))

    def _track(self, target: np.ndarray) -> None:
        """control="tracker": move the running impedance controller's reference, or start one."""
        franky, robot = self._franky, self._robot
        reference = franky.CartesianReference(target=self._affine(target))
        if self._tracker is not None and not robot.is_in_control:
            # It ended without a hold: a reflex or another control error, which join_motion raises (once;
            # the next command starts a new tracker, which fails too until the error is recovered).
            self._tracker = self._arm_target = None
            robot.join_motion(timeout=0.0)
        if self._tracker is not None:
            self._tracker.set_reference(reference)
            self._arm_target = ("pose", target)
            return
        if self._adds_nothing("pose", target):
            return
        running = robot.current_control_signal_type
        if running is not None and running != franky.ControlSignalType.Torques:
            self._stop_motion(running)  # franky cannot switch control types mid-motion
            robot.join_motion(timeout=2.0)
        motion = self._tracking_motion()
        motion.set_reference(reference)  # before it starts: its first cycle already tracks the target
        self._arm_target = None
        robot.move(motion, asynchronous=True)
        self._tracker, self._arm_target = motion, ("pose", target)

    def _tracking_motion(self):
        translational, rotational = self.tracker_stiffness
        clip_m, clip_rad = TRACKER_ERROR_CLIP
        return self._franky.CartesianImpedanceTrackingMotion(
            translational_stiffness=translational, rotational_stiffness=rotational,
            translational_error_clip=np.full(3, clip_m), rotational_error_clip=np.full(3, clip_rad))

    def _adds_nothing(self, kind: str, target: np.ndarray) -> bool:
        """True for a target the arm already holds: the running motion's, or, with none running, the pose.

        Each motion restarts franky's Ruckig planner, and a target a few micrometres from a resting
        arm can fail its synchronization step ("Motion planner failed with error code -111", which a
        policy's "stay" commands hit while the gripper moves). Below the arm's repeatability (0.1 mm)
        such a motion moves nothing, so it is not sent.
        """
        if self._robot.current_control_signal_type is not None:  # a motion runs (or holds its target)
            held = self._arm_target
            return held is not None and held[0] == kind and self._within_tolerance(kind, target, held[1])
        self._arm_target = None  # stopped, by a stop motion or a reflex: the arm is where it is
        state = self._robot.state
        here = np.asarray(state.q, dtype=np.float64).reshape(7) if kind == "joint" else self._pose_vector(state)
        return self._within_tolerance(kind, target, here)

    def _affine(self, pose: np.ndarray):
        """A (6,) base-frame pose vector (position, rotation vector) as a franky.Affine."""
        return self._franky.Affine(pose[:3], Rotation.from_rotvec(pose[3:]).as_quat())  # x, y, z, w

    @staticmethod
    def _pose_vector(state) -> np.ndarray:
        """The measured flange pose of a franky RobotState as a (6,) vector (position, rotation vector)."""
        pose = np.asarray(state.O_T_EE.matrix, dtype=np.float64)
        return np.concatenate([pose[:3, 3], Rotation.from_matrix(pose[:3, :3]).as_rotvec()])

    @staticmethod
    def _within_tolerance(kind: str, a: np.ndarray, b: np.ndarray) -> bool:
        if kind == "joint":
            return bool(np.abs(a - b).max() < TARGET_TOLERANCE_RAD)
        turn = (Rotation.from_rotvec(a[3:]) * Rotation.from_rotvec(b[3:]).inv()).magnitude()
        return bool(np.linalg.norm(a[:3] - b[:3]) < TARGET_TOLERANCE_M and turn < TARGET_TOLERANCE_RAD)

    def _hold(self) -> None:
        if self._robot is None:
            return
        self._check_link()
        try:
            if self.control == "tracker":
                self._hold_tracker()
                return
            running = self._robot.current_control_signal_type
            if running is not None:
                self._stop_motion(running)
        except Exception as e:
            raise self._error(e, "stopping the arm") from None

    def _hold_tracker(self) -> None:
        """Hold in tracker mode: the running controller's reference to the measured pose.

        The impedance stops the arm and pulls it back to where it was when the hold came (a fast arm
        swings past it first; see the module docstring), and keeps it there; the next command just
        moves the reference again. Ending torque control here instead (franky's TorqueStopMotion) ramps the controller's
        last torque out over 0.2 s, which keeps pushing a fast arm on: in franky-sim it carried the arm
        5-10 cm past the pose of the hold. The tracker ends on disconnect, once the arm is at rest.
        """
        robot = self._robot
        if self._tracker is None:
            return  # nothing tracks: the robot holds its pose by itself
        if not robot.is_in_control:  # ended by a control error, which the next command raises
            return
        here = self._pose_vector(robot.state)
        self._tracker.set_reference(self._franky.CartesianReference(target=self._affine(here)))
        self._arm_target = ("pose", here)

    def _end_tracking(self, settle: float = 1.0) -> None:
        """End tracker mode's torque control: hold, wait (up to `settle` s) for the arm to come to rest, then
        franky's TorqueStopMotion, which ramps the remaining torque into joint damping and finishes."""
        robot, tracker = self._robot, self._tracker
        if tracker is None or not robot.is_in_control:
            self._tracker = None
            return
        self._hold_tracker()
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and np.abs(np.asarray(robot.state.dq)).max() > 0.02:
            time.sleep(0.01)
        self._tracker = self._arm_target = None
        robot.move(self._franky.TorqueStopMotion(), asynchronous=True)

    # --- helpers --------------------------------------------------------------------------------
    def _stop_motion(self, signal) -> None:
        franky = self._franky
        stops = {franky.ControlSignalType.CartesianPose: franky.CartesianStopMotion,
                 franky.ControlSignalType.JointPositions: franky.JointStopMotion,
                 franky.ControlSignalType.CartesianVelocities: franky.CartesianVelocityStopMotion,
                 franky.ControlSignalType.JointVelocities: franky.JointVelocityStopMotion,
                 franky.ControlSignalType.Torques: franky.TorqueStopMotion}
        if signal in stops:
            self._robot.move(stops[signal](), asynchronous=True)
        else:
            self._robot.stop()

    def _check_link(self) -> None:
        if self._lost:
            raise LinkLost(self._lost)

    def _read_images(self) -> dict[str, np.ndarray]:
        cameras = self.config.cameras
        if not cameras:
            return {}
        try:
            frames = self.camera_source.read() or {}
        except Exception as e:
            source = type(self.camera_source).__name__
            raise LinkLost(f"franky: camera source {source} failed: {_one_line(e)}") from None
        missing = [c for c in cameras if frames.get(c) is None]
        if missing:
            message = f"camera source gave no image for {missing}"
            raise LinkLost(f"franky: {message}") if self._complete else NotYet(message)
        images = {}
        for camera in cameras:
            image = np.asarray(frames[camera])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise RobotError(f"franky: camera source image {camera!r} must be HxWx3 uint8 RGB, "
                                 f"got {image.dtype} {image.shape}")
            images[camera] = square_image(image, self.config.image_size)
        return images

    def _command_gripper(self, width: float) -> None:
        with self._gripper_wake:
            error, self._gripper_command_error = self._gripper_command_error, None
            measured = self._gripper_reading[0] if self._gripper_reading else None
            tol = self.gripper_tolerance
            unchanged = self._gripper_sent is not None and abs(width - self._gripper_sent) <= tol
            at_width = measured is not None and abs(width - measured) <= tol  # "keep", or already there
            if not unchanged and not at_width:
                self._gripper_sent = self._gripper_pending = width
                self._gripper_wake.notify_all()
        if error is not None:
            raise error

    def _gripper_reader(self, gripper, stop: threading.Event) -> None:
        """Thread: keep the latest gripper width (each read blocks until the hand's next message)."""
        while not stop.is_set():
            try:
                width = float(gripper.state.width)
            except Exception as e:
                error = self._error(e, "reading the gripper state", sticky=False)
                with self._lock:
                    if not stop.is_set():  # not an old connection's thread
                        self._gripper_link_error = error if isinstance(error, LinkLost) else LinkLost(str(error))
                return
            with self._lock:
                if stop.is_set():
                    return
                self._gripper_reading = (width, time.monotonic())

    def _gripper_commander(self, gripper, stop: threading.Event) -> None:
        """Thread: run the newest gripper target, one blocking grasp/move at a time."""
        while True:
            with self._gripper_wake:
                while self._gripper_pending is None and not stop.is_set():
                    self._gripper_wake.wait()
                if stop.is_set():
                    return
                width, self._gripper_pending = self._gripper_pending, None
            try:
                if width <= self.gripper_tolerance:
                    # Close with force; any final width counts as done (grasped or closed on nothing).
                    gripper.grasp(0.0, self.gripper_speed, self.gripper_force, epsilon_inner=0.005,
                                  epsilon_outer=max(self.config.gripper_open_width, 0.1))
                else:
                    gripper.move(width, self.gripper_speed)
            except Exception as e:
                if stop.is_set():
                    return
                error = self._error(e, f"commanding the gripper to {width * 1000:.0f} mm", sticky=False)
                logger.warning("%s", error)
                with self._lock:
                    if stop.is_set():
                        return
                    if isinstance(error, LinkLost):
                        self._gripper_link_error = error
                        return
                    self._gripper_command_error = error

    def _error(self, e: BaseException, what: str, sticky: bool = True) -> RobotError:
        """A franky/libfranka exception -> LinkLost (network) or RobotError, with a one-line message."""
        if isinstance(e, RobotError):
            return e
        franky, host, text = self._franky, self.config.franky_host, _one_line(e)
        network = (isinstance(e, franky.NetworkException)
                   or (type(e) is RuntimeError and "Net Exception" in str(e)))  # Poco's, from inside libfranka
        if network:
            error = LinkLost(f"franky: link to the robot at {host} lost while {what}: {text}")
            if sticky:
                self._lost = str(error)
            return error
        if isinstance(e, franky.ControlException):
            return RobotError(f"franky: control error while {what}: {text} (the arm has stopped; "
                              f"recover() or reconnect to clear it)")
        if isinstance(e, franky.RealtimeException):
            return RobotError(f"franky: {text} (run on a realtime kernel, or pass FrankyRobot(..., realtime=False))")
        return RobotError(f"franky: {type(e).__name__} while {what}: {text}")
