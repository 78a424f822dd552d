"""`vla deploy`: a checkpoint driving a robot through the safety layer at a fixed rate.

    observe ─ every period (20 Hz): read the robot, check freshness, record
    infer   ─ on its own thread: the last n_obs_steps observations -> a chunk of H actions
    act     ─ every period: the action the newest chunk planned for *this* step, via the safety layer

Asynchronous inference. A chunk computed from the observation of step k plans steps k .. k+H-1.
It arrives L steps later (L = inference latency / period); its first L actions are for steps
already past, so they are skipped (counted as stale), and execution continues at step k+L. The
next inference starts early enough that its chunk lands before the current one's
n_action_steps run out (the lead is the measured latency). Until the first chunk arrives, and
whenever the chunks run dry, the arm holds. Temporal ensembling instead re-plans back-to-back
and averages every chunk that covers a step (ACT), older chunks weighing more.

Synchronous inference (``deploy.async_inference=false``) blocks the loop while it infers: on the
lockstep `sim` backend that is exactly `vla eval`'s rollout.

Every step is recorded into a LeRobot dataset (what was observed, what was sent); a fault or
Ctrl-C saves the episode so far, leaves the arm holding and writes the report.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from envs.robot.base import RobotState
from envs.robot.safety import SafeRobot
from vla.config import DeployConfig
from vla.errors import ConfigError, RobotError, SafetyStop
from vla.chunking import MASKS, METHODS, ActionSchedule, ChunkPrefix
from vla.deploy_report import EpisodeResult, percentiles_ms, summarize, write_report

logger = logging.getLogger(__name__)


class InferenceTimeout(RuntimeError):
    """The policy produced no chunk for deploy.max_inference_seconds while the arm held."""


class InferenceWorker:
    """Runs `runtime.predict_chunk` on a thread, one request at a time."""

    def __init__(self, runtime, inject_delay: float = 0.0):
        self.runtime, self.inject_delay = runtime, inject_delay
        self._request: tuple[list[dict], int, object, int | None] | None = None
        self._result: tuple[int, np.ndarray, float] | None = None
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._closed = False
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="vla-inference", daemon=True)
        self._thread.start()

    def submit(self, history: list[dict], step: int, prefix=None, seed: int | None = None) -> None:
        with self._cv:
            self._request, self.busy = (history, step, prefix, seed), True
            self._cv.notify()

    def poll(self) -> tuple[int, np.ndarray, float] | None:
        """(step, chunk, latency s) when a chunk is ready; re-raises an inference error."""
        with self._cv:
            if self._error is not None:
                raise self._error
            result, self._result = self._result, None
            return result

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._request is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                (history, step, prefix, seed), self._request = self._request, None
            start = time.perf_counter()
            try:
                chunk = self.runtime.predict_chunk(history, step, prefix, seed)
                if self.inject_delay > 0:  # deploy.inject_delay_ms: rehearse a slower policy
                    time.sleep(self.inject_delay)
            except BaseException as e:  # surfaced on the control thread by poll()
                with self._cv:
                    self._error, self.busy = e, False
                return
            with self._cv:
                self._result, self.busy = (step, chunk, time.perf_counter() - start), False


@dataclass
class _EpisodeLoop:
    """The state the steps of one episode share: the plan, the recent observations, the clock."""
    result: EpisodeResult
    schedule: ActionSchedule
    history: deque                       # the last n_obs_steps observations: the policy's input
    worker: InferenceWorker | None       # None: synchronous inference
    start: float                         # time.monotonic() at the start
    next_tick: float                     # when the next period is due
    bar: object = None                   # the progress bar, if any
    step: int = 0
    latency_ema: float = 0.0             # s; how early the next asynchronous inference starts
    last_command: float | None = None
    waiting_since: float | None = None   # when the chunks ran dry; None while an action is planned
    pending: tuple[int, np.ndarray, int] | None = None  # synchronous with an injected delay: (start, chunk, lands at)
    sub: int = 0                         # the control period within the current policy step (deploy.time_scale)
    step_start: np.ndarray | None = None  # joint positions when the policy step began (joint targets interpolate)
    recent_sent: deque = field(default_factory=lambda: deque(maxlen=3))  # the last sent commands (None: held)
    last_source: int | None = None       # the observation step of the chunk the last command came from
    seed: int | None = None              # the episode's seed: the policy's noise comes from it (vla/seeding.py)


class Deployer:
    """One robot, one runtime policy, the control loop; `run_episode()` per episode."""

    def __init__(self, robot: SafeRobot, runtime, config: DeployConfig, *, recorder=None, progress: bool = True):
        self.robot, self.runtime, self.config, self.recorder = robot, runtime, config, recorder
        self.period = 1.0 / robot.config.control_hz
        self.progress = progress
        # deploy.time_scale: one policy step spans this many control periods (the same path, slower)
        self.time_scale = int(config.time_scale)
        self.step_period = self.period * self.time_scale
        # synchronous inference with deploy.inject_delay_ms: a chunk takes effect this many policy steps late
        self.delay_steps = math.ceil(config.inject_delay_ms / 1000.0 / self.step_period - 1e-9)
        if config.rtc and config.rtc_method == "condition" and self.delay_steps > runtime.committed_max_delay:
            logger.warning("deploy.rtc_method=condition: the delay is %d steps, the policy was trained to continue "
                           "at most %d committed actions; it plans the rest itself", self.delay_steps,
                           runtime.committed_max_delay)

    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        """Tick every period until max_steps, success (if it stops the run), a fault or Ctrl-C;
        whatever ends it, the arm is left holding and the steps so far are saved. ``seed``: the
        episode's, from which the policy's noise is drawn (None: the global RNG)."""
        loop = self._start_episode(seed)
        try:
            while loop.step < self.config.max_steps:
                if self._tick(loop):
                    break
        except (RobotError, InferenceTimeout, KeyboardInterrupt) as e:  # SafetyStop is a RobotError
            self._stopped_by(loop, e)
        finally:
            self._finish_episode(loop)
        return loop.result

    def _start_episode(self, seed: int | None) -> _EpisodeLoop:
        runtime, cfg = self.runtime, self.config
        runtime.reset()
        schedule = ActionSchedule(runtime.horizon, runtime.n_action_steps, cfg.temporal_ensemble)
        history: deque[dict] = deque(maxlen=runtime.n_obs_steps)
        worker = InferenceWorker(runtime, cfg.inject_delay_ms / 1000.0) if cfg.async_inference else None
        now = time.monotonic()
        loop = _EpisodeLoop(EpisodeResult(), schedule, history, worker, start=now, next_tick=now, seed=seed)
        if self.progress:
            from tqdm import tqdm

            loop.bar = tqdm(total=cfg.max_steps, desc="deploy", unit="step", leave=False)
        return loop

    def _tick(self, loop: _EpisodeLoop) -> bool:
        """One control period: observe, plan, act, record, then wait for the next; True ends the episode (success).
        The policy observes and plans at the start of each of its steps (every period, or every
        deploy.time_scale periods)."""
        tick = time.monotonic()
        state = self.robot.read_state()
        obs = self.robot.observation_from(state)
        if loop.sub == 0:
            loop.history.append(obs)
            loop.step_start = np.asarray(state.joint_pos, dtype=np.float64)
            if loop.worker is not None:
                self._infer_async(loop)
            else:
                self._infer_now(loop)
        sent = self._act(loop, state, tick)
        self._record(loop, obs, sent, tick)
        if self._ends_on_success(loop.result):
            return True
        self._wait_for_next_period(loop)
        return False

    def _infer_async(self, loop: _EpisodeLoop) -> None:
        """Take a chunk the worker finished; start the next one early enough (by the measured latency)
        that it lands before the current chunk's n_action_steps run out."""
        result, worker = loop.result, loop.worker
        ready = worker.poll()
        if ready is not None:
            s, chunk, latency = ready
            loop.schedule.add(s, chunk, loop.step)
            result.chunks += 1
            result.latencies.append(latency)
            loop.latency_ema = latency if result.chunks == 1 else 0.8 * loop.latency_ema + 0.2 * latency
        lead = math.ceil(loop.latency_ema / self.step_period)
        if not worker.busy and loop.schedule.needs_chunk(loop.step, lead):
            worker.submit(list(loop.history), loop.step, self._prefix(loop, lead), loop.seed)

    def _infer_now(self, loop: _EpisodeLoop) -> None:
        """Synchronous inference: the loop waits for the chunk (on the lockstep sim, `vla eval`'s rollout).
        With an injected delay of d steps the chunk takes effect d steps after its observation, the
        current plan running meanwhile: asynchronous inference's timing, without its wall clock."""
        if loop.pending is not None and loop.step >= loop.pending[2]:
            start, chunk, _ = loop.pending
            loop.pending = None
            loop.schedule.add(start, chunk, loop.step)
        if loop.pending is not None or not loop.schedule.needs_chunk(loop.step, self.delay_steps):
            return
        t0 = time.perf_counter()
        chunk = self.runtime.predict_chunk(list(loop.history), loop.step, self._prefix(loop, self.delay_steps),
                                           loop.seed)
        loop.result.chunks += 1
        loop.result.latencies.append(time.perf_counter() - t0)
        if self.delay_steps == 0:
            loop.schedule.add(loop.step, chunk, loop.step)
        else:
            loop.pending = (loop.step, chunk, loop.step + self.delay_steps)

    def _prefix(self, loop: _EpisodeLoop, delay: int) -> ChunkPrefix | None:
        """Real-time chunking: what the current plan runs from this step on, of which the first
        ``delay`` actions will have run when the next chunk arrives; None without a plan (or RTC)."""
        plan = loop.schedule.plan(loop.step) if self.config.rtc else None
        if plan is None:
            return None
        return ChunkPrefix(plan, delay, self.config.rtc_max_guidance, self.config.rtc_method, self.config.rtc_mask)

    def _act(self, loop: _EpisodeLoop, state: RobotState, tick: float) -> np.ndarray:
        """Send the action planned for this step, or hold while none is; returns what the dataset records."""
        action = loop.schedule.action(loop.step)
        if action is not None:
            loop.waiting_since = None
            sent = self.robot.send_action(self._slowed(action, loop))
            self._note_smoothness(loop, sent, loop.schedule.source(loop.step))
            return sent
        loop.recent_sent.append(None)
        self.robot.hold()
        loop.result.held_steps += 1
        if loop.waiting_since is None:
            loop.waiting_since = tick
        elif tick - loop.waiting_since > self.config.max_inference_seconds:
            raise InferenceTimeout(f"no action chunk for {tick - loop.waiting_since:.1f} s "
                                   f"(deploy.max_inference_seconds={self.config.max_inference_seconds}); "
                                   "the arm is holding")
        return self.robot.hold_action(state)

    def _slowed(self, action: np.ndarray, loop: _EpisodeLoop) -> np.ndarray:
        """The command for this control period of a policy step spanning deploy.time_scale periods:
        an end-effector delta divided evenly over them, a joint target approached in equal parts
        from where the step began; the gripper as the policy says. The same path, k times slower."""
        k = self.time_scale
        if k == 1:
            return action
        out = np.array(action, dtype=np.float64)
        if self.robot.config.action_space == "eef_delta":
            out[:-1] /= k
        else:
            out[:-1] = loop.step_start + (out[:-1] - loop.step_start) * (loop.sub + 1) / k
        return out

    @staticmethod
    def _note_smoothness(loop: _EpisodeLoop, sent: np.ndarray, source: int | None) -> None:
        """The command's second difference (all but the gripper), filed under chunk boundary or not."""
        loop.recent_sent.append(np.asarray(sent, dtype=np.float64)[:-1])
        if len(loop.recent_sent) == 3 and all(a is not None for a in loop.recent_sent):
            a0, a1, a2 = loop.recent_sent
            jerk = float(np.linalg.norm(a2 - 2 * a1 + a0))
            boundary = loop.last_source is not None and source != loop.last_source
            (loop.result.boundary_jerk if boundary else loop.result.within_chunk_jerk).append(jerk)
        loop.last_source = source

    def _record(self, loop: _EpisodeLoop, obs: dict, sent: np.ndarray, tick: float) -> None:
        """Timings, the dataset frame and the step count of a step whose command has gone out."""
        result, now = loop.result, time.monotonic()
        result.obs_to_command.append(now - tick)
        if loop.last_command is not None:
            result.periods.append(now - loop.last_command)
        loop.last_command = now
        if self.recorder is not None:
            self.recorder.add_frame(obs, sent)
        loop.sub += 1
        if loop.sub < self.time_scale:
            return
        loop.sub = 0
        loop.step += 1
        result.steps = loop.step
        if loop.bar is not None:
            loop.bar.update(1)

    def _ends_on_success(self, result: EpisodeResult) -> bool:
        """Note whether the task succeeded (where something measures it); True if that stops the episode."""
        success = self.robot.task_success()
        if success:
            result.success = True
            if self.config.stop_on_success:
                result.stopped = "success"
                return True
        elif success is not None:
            result.success = False
        return False

    def _wait_for_next_period(self, loop: _EpisodeLoop) -> None:
        loop.next_tick += self.period
        delay = loop.next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:  # late: keep the rate from here rather than bursting to catch up
            loop.result.overruns += 1
            loop.next_tick = time.monotonic()

    def _stopped_by(self, loop: _EpisodeLoop, error: BaseException) -> None:
        """A fault or Ctrl-C ends the episode: the arm holds and the result says why and since when."""
        result = loop.result
        if isinstance(error, SafetyStop):  # the safety layer has already held and logged it
            result.stopped, result.message = "fault", str(error)
            result.fault_time = self.robot.log[-1].time if self.robot.log else time.monotonic()
        elif isinstance(error, InferenceTimeout):
            result.stopped, result.message = "fault", str(error)
            result.fault_time = loop.waiting_since  # the arm has held since the chunks ran dry
        elif isinstance(error, RobotError):
            self.robot.hold()
            result.stopped, result.message = "fault", f"{error}; the arm is holding"
            result.fault_time = time.monotonic()
        else:  # KeyboardInterrupt
            self.robot.hold()
            result.stopped, result.message = "interrupted", "stopped by Ctrl-C; the arm is holding"

    def _finish_episode(self, loop: _EpisodeLoop) -> None:
        """Stop the bar and the worker, fill in the totals, save the episode's frames (if any)."""
        if loop.bar is not None:
            loop.bar.close()
        if loop.worker is not None:
            loop.worker.close()
        loop.result.stale_skipped = loop.schedule.stale_skipped
        loop.result.seconds = time.monotonic() - loop.start
        if self.recorder is not None and self.recorder.frames_in_episode > 0:
            loop.result.dataset_episode = self.recorder.save_episode()


def check_compatible(robot, runtime) -> None:
    """The robot's features, mapped as the runtime maps them (the checkpoint's dataset mapping,
    a mixture's embodiment), must be what the policy consumes; the error names the key."""
    from vla.features import ACTION, OBS_STATE, image_key

    feats = robot.observation_features
    probe = runtime.feature_map.apply({k: np.zeros((1, *f["shape"])) for k, f in feats.items() if "shape" in f})
    for camera, pad in zip(runtime.cameras, runtime.camera_pad):
        if not pad and image_key(camera) not in probe:
            source = str(runtime.feature_map.sources_of(image_key(camera))[0])
            also = f" (nor {source!r}, which the checkpoint's mapping reads it from)" if source != image_key(camera) \
                else ""
            raise ValueError(f"the policy needs {image_key(camera)!r}{also}, which the robot does not provide "
                             f"(robot.cameras={list(robot.config.cameras)})")
    width = probe[OBS_STATE].shape[-1] if OBS_STATE in probe else 0
    if width != runtime.state_dim:
        raise ValueError(f"{OBS_STATE}: the policy expects {runtime.state_dim} values, the robot gives {width}")
    if robot.action_features[ACTION]["shape"][0] != runtime.action_dim:
        raise ValueError(f"{ACTION}: the policy outputs {runtime.action_dim} values, robot.action_space="
                         f"{robot.config.action_space} takes {robot.action_features[ACTION]['shape'][0]}")


def deploy(run, *, progress: bool = True) -> dict:
    """Load the checkpoint, connect the robot, run `deploy.episodes` episodes; returns the summary."""
    cfg = run.deploy
    _check_settings(run)
    ckpt = cfg.server or cfg.checkpoint or run.output_dir
    runtime = _load_runtime(run, ckpt)
    if cfg.rtc and not runtime.follows_prefix:
        if cfg.server:
            runtime.close()
        raise ConfigError(f"deploy.rtc: the {runtime.describe()['policy']} policy samples no noise process to guide "
                          "(real-time chunking needs Dita or DUST)")
    if cfg.rtc and cfg.rtc_method == "condition" and not runtime.committed_max_delay:
        if cfg.server:
            runtime.close()
        raise ConfigError("deploy.rtc_method=condition: the policy was not trained with committed actions; train it "
                          "with policy.rtc_train_max_delay=<steps> or use rtc_method=guidance / inpaint")
    out = Path(cfg.output_dir or Path(run.output_dir) / "deploy")
    recorder = None
    try:
        robot = _make_compatible_robot(run, runtime, out)
        protocol = _protocol(run, ckpt, runtime)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)  # before connecting: a fault while connecting is logged there
        try:
            with robot:
                recorder = _make_recorder(run, robot, out)  # once connected: a robot never reached records nothing
                results = _run_episodes(Deployer(robot, runtime, cfg, recorder=recorder, progress=progress),
                                        progress)
        except BaseException:
            if created and not any(out.iterdir()):  # refused before anything happened: leave nothing behind
                out.rmdir()
            raise
    finally:
        if recorder is not None:
            recorder.close()
        if cfg.server:
            runtime.close()
    summary = summarize(results, robot, protocol)
    if cfg.server:  # what the network and the server added to each chunk
        summary["server"] = {"round_trip_ms": percentiles_ms(runtime.round_trips),
                             "server_ms": percentiles_ms(runtime.server_seconds)}
    write_report(out, summary)
    return summary


def _check_settings(run) -> None:
    """The deploy and robot settings, checked before anything loads (ConfigError names the field)."""
    if run.deploy.episodes < 1 or run.deploy.max_steps < 1:
        raise ConfigError("deploy.episodes and deploy.max_steps must be >= 1")
    if run.deploy.rtc_method not in METHODS:
        raise ConfigError(f"deploy.rtc_method={run.deploy.rtc_method!r}; choose one of {list(METHODS)}")
    if run.deploy.rtc_mask not in MASKS:
        raise ConfigError(f"deploy.rtc_mask={run.deploy.rtc_mask!r}; choose one of {list(MASKS)}")
    if run.deploy.rtc and run.deploy.temporal_ensemble is not None:
        raise ConfigError("deploy.rtc with deploy.temporal_ensemble: real-time chunking continues one plan, "
                          "ensembling averages several; choose one")
    try:
        run.robot.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _load_runtime(run, ckpt):
    """What deploy drives: a RuntimePolicy on the checkpoint, or a RemotePolicy on the server."""
    cfg = run.deploy
    if cfg.server:
        if cfg.threads is not None:
            raise ConfigError("deploy.threads with deploy.server: the server's are serve.threads")
        return _connect_server(cfg)
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    from vla.checkpoint import load_policy
    from vla.distributed import pick_device
    from vla.runtime import RuntimePolicy

    policy, normalizer = load_policy(ckpt, pick_device(run.device))
    return RuntimePolicy.from_settings(policy, normalizer, cfg, "deploy")


def _connect_server(cfg):
    """A connected RemotePolicy; the sampling settings are the server's (serve.*), so deploy.* ones
    that would change them are refused, as is an embodiment the server does not run."""
    from vla.remote import PolicyServerError, RemotePolicy

    for key in ("inference_steps", "test_time_scaling", "checkpoint"):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"deploy.{key} with deploy.server: the server decides it (vla serve serve.{key}=...)")
    try:
        remote = RemotePolicy(cfg.server, timeout=cfg.server_timeout, n_action_steps=cfg.n_action_steps).connect()
    except PolicyServerError as e:  # nothing has moved yet: a setting to fix, not a fault
        raise ConfigError(f"deploy.server: {e}") from None
    served = remote.metadata.get("embodiment")
    if cfg.embodiment is not None and cfg.embodiment != served:
        remote.close()
        raise ConfigError(f"deploy.embodiment={cfg.embodiment!r}, but the server runs {served!r} "
                          f"(vla serve serve.embodiment=...)")
    if remote.n_action_steps > remote.horizon:
        remote.close()
        raise ConfigError(f"deploy.n_action_steps={remote.n_action_steps} must be <= the server's horizon "
                          f"{remote.horizon}")
    return remote


def _make_compatible_robot(run, runtime, out: Path) -> SafeRobot:
    """The robot (not yet connected) behind its safety layer, with the features the policy consumes."""
    from envs.robot import make_robot

    try:
        robot = make_robot(run.robot, log_path=out / "interventions.jsonl", dry_run=run.deploy.dry_run)
        check_compatible(robot, runtime)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return robot


def _make_recorder(run, robot: SafeRobot, out: Path):
    """The dataset every step goes into (deploy.record), else None."""
    if not run.deploy.record:
        return None
    from vla.data.recorder import EpisodeRecorder

    rcfg = run.robot
    features = {**robot.observation_features, **robot.action_features}
    return EpisodeRecorder(run.deploy.dataset_root or out / "data", features, fps=round(rcfg.control_hz),
                           robot_type=f"franka_{rcfg.backend}", task=rcfg.task)


def _protocol(run, ckpt, runtime) -> dict:
    """What the report's numbers were measured under."""
    cfg, rcfg = run.deploy, run.robot
    return {"checkpoint": ckpt, "backend": rcfg.backend, "action_space": rcfg.action_space,
            "control_hz": rcfg.control_hz, "dry_run": cfg.dry_run, "async_inference": cfg.async_inference,
            "n_action_steps": runtime.n_action_steps, "temporal_ensemble": cfg.temporal_ensemble,
            "rtc": cfg.rtc, "rtc_method": cfg.rtc_method, "rtc_mask": cfg.rtc_mask,
            "inject_delay_ms": cfg.inject_delay_ms, "time_scale": cfg.time_scale,
            "episodes": cfg.episodes, "max_steps": cfg.max_steps,
            "seeds": f"{cfg.seed} .. {cfg.seed + cfg.episodes - 1}",
            **runtime.describe(), "safety": asdict(rcfg.safety)}


def _run_episodes(deployer: Deployer, progress: bool) -> list[EpisodeResult]:
    """deploy.episodes episodes on a connected robot, each from a reset scene, until one ends the run."""
    robot, cfg = deployer.robot, deployer.config
    results = []
    for k in range(cfg.episodes):
        resettable = robot.reset_episode(cfg.seed + k)
        if not resettable and k > 0:
            input(f"episode {k + 1}/{cfg.episodes}: reset the scene, then press Enter ")
        robot.rearm()  # a fault in a simulated cell ended only its episode (see below)
        result = deployer.run_episode(cfg.seed + k)
        results.append(result)
        if progress:
            print(f"episode {k + 1}/{cfg.episodes}: {result.stopped} after {result.steps} steps"
                  f"{'' if result.success is None else f', success={result.success}'}"
                  f"{f' - {result.message}' if result.message else ''}")
        # A fault ends the run on a real arm. A simulated cell (sim, the twin) starts the
        # next episode from a fresh scene, unless the link itself is gone.
        link_gone = robot.fault is not None and robot.fault.reason in ("link_lost", "read_error")
        if result.stopped == "interrupted" or (result.stopped == "fault" and (not resettable or link_gone)):
            break
    return results
