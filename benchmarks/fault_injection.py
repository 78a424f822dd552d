"""Fault injection: a real policy deployed to the digital twin while things go wrong.

    PYTHONPATH=. python -m benchmarks.fault_injection --checkpoint outputs/demo/run

Each scenario runs `vla deploy`'s control loop (`vla.deploy.Deployer`) against the twin through
a real bridge (rclpy over DDS, or a rosbridge-server-rs websocket) and injects one fault:

    nan_action          the policy emits NaN from its 3rd chunk on
    out_of_range        ... targets 1 m outside the workspace
    large_jump          ... 10x the per-step translation limit
    stale_observation   a camera stops publishing mid-episode
    link_dropped        the rosbridge server is killed mid-chunk
    latency_spike       one inference stalls past deploy.max_inference_seconds
    bridge_restarted    the rosbridge server restarts mid-episode
    server_killed       the policy server (`vla serve`, in-process here) goes away mid-run
    server_slow         ... answers one chunk later than deploy.server_timeout
    server_malformed    ... answers a chunk of the wrong shape

and checks, from what the twin itself received: no command outside the limits reached the arm,
the arm was told to hold (or, with the link gone, the twin's own command timeout held it)
within one control period of the fault being detected, the run ended with a message naming the
fault, and every step up to the fault is in the recorded LeRobot dataset. `tests/test_faults.py`
runs the same scenarios. Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from envs.robot import RobotConfig, make_robot
from envs.robot.config import SafetyConfig

SCENARIOS = ["nan_action", "out_of_range", "large_jump", "stale_observation", "link_dropped",
             "latency_spike", "bridge_restarted", "server_killed", "server_slow", "server_malformed"]
SERVER_FAULTS = ("server_killed", "server_slow", "server_malformed")
SERVER_TIMEOUT = 1.0  # deploy.server_timeout in the policy-server scenarios
# Limits for these runs: a real-arm speed limit (2.5 cm per period), a watchdog deadline a
# CPU-starved twin keeps (the twin and the policy share 2 cores), a quick persistent-limit stop.
LIMITS = dict(max_eef_speed=0.5, observation_deadline=0.5, max_consecutive_limited=10)
# Except in the two scenarios about limits, the policy's translations are scaled to stay inside
# that speed limit, so the only fault in a run is the injected one: a policy trained on the
# tabletop moves up to 5 cm per period (1 m/s), and would trip the persistent-limit stop first.
CALM = 0.4
LIMIT_FAULTS = ("out_of_range", "large_jump")
FAULT_CHUNK = 2  # faults start at the policy's 3rd chunk


class FaultyRuntime:
    """A RuntimePolicy whose chunks (or timing) go wrong on purpose from chunk FAULT_CHUNK on."""

    def __init__(self, runtime, scenario: str, on_fault=None):
        self.runtime, self.scenario, self.on_fault = runtime, scenario, on_fault
        self.horizon, self.n_obs_steps = runtime.horizon, runtime.n_obs_steps
        self.n_action_steps = runtime.n_action_steps
        self.chunks = 0
        self.injected_at: float | None = None  # time.monotonic() of the first injected fault

    def reset(self) -> None:
        self.runtime.reset()
        self.chunks = 0

    @property
    def follows_prefix(self) -> bool:
        return self.runtime.follows_prefix

    def predict_chunk(self, history: list[dict], step: int, prefix=None, seed=None) -> np.ndarray:
        chunk = self.runtime.predict_chunk(history, step, prefix, seed)
        if self.scenario not in LIMIT_FAULTS:
            chunk[:, :3] *= CALM
        k, self.chunks = self.chunks, self.chunks + 1
        if k < FAULT_CHUNK:
            return chunk
        if self.injected_at is None:
            self.injected_at = time.monotonic()
            if self.on_fault is not None:
                self.on_fault()
        chunk = chunk.copy()
        if self.scenario == "nan_action":
            chunk[:, 2] = np.nan
        elif self.scenario == "out_of_range":
            chunk[:, 2] = -20.0  # 1 m down: through the table
        elif self.scenario == "large_jump":
            chunk[:, 0] = 10.0 * np.sign(chunk[:, 0] + 1e-9)
        elif self.scenario == "latency_spike" and k == FAULT_CHUNK:
            time.sleep(3.0)
        elif self.scenario == "server_slow" and k == FAULT_CHUNK:
            time.sleep(3 * SERVER_TIMEOUT)
        elif self.scenario == "server_malformed":
            chunk = chunk[:3]
        return chunk


@dataclass
class ScenarioResult:
    scenario: str
    backend: str
    stopped: str
    message: str
    steps: int
    frames_recorded: int
    commands_sent: int
    commands_changed: int
    commands_received: int          # by the twin, during the run
    violations: list[str] = field(default_factory=list)  # commands the twin received outside the limits
    hold_after_s: float | None = None  # fault detected -> the arm holding
    held_by: str = ""               # "driver" (a hold command) or "twin timeout" (link gone)


def check_commands(commands: list[dict], limits: SafetyConfig, period: float) -> list[str]:
    """Every pose command the twin received, against the workspace and step limits."""
    max_step = min(limits.max_translation_step, limits.max_eef_speed * period)
    bad = []
    for c in commands:
        pos = c["target_pos"]
        if not np.all(np.isfinite(pos)) or not np.all(np.isfinite(c["target_rot"])):
            bad.append(f"non-finite target {pos}")
            continue
        if (np.any(pos < np.asarray(limits.workspace_low) - 1e-6)
                or np.any(pos > np.asarray(limits.workspace_high) + 1e-6)):
            bad.append(f"target {pos.round(3)} outside the workspace")
        # The driver limits the step relative to the state it measured, which is up to one
        # twin period older than the twin's state at receipt: allow one more step of motion.
        if np.linalg.norm(pos - c["eef_pos"]) > 2 * max_step + 1e-3:
            bad.append(f"step of {np.linalg.norm(pos - c['eef_pos']) * 1000:.1f} mm")
        angle = np.linalg.norm(Rotation.from_matrix(c["target_rot"] @ c["eef_rot"].T).as_rotvec())
        if angle > 2 * limits.max_rotation_step + 1e-3:
            bad.append(f"rotation of {angle:.2f} rad")
    return bad


def run_scenario(scenario: str, runtime, twin, out: Path, *, bridge=None, max_steps: int = 240) -> ScenarioResult:
    """One deploy episode on the twin with `scenario` injected; everything measured from the twin."""
    # Every scenario ends the run on its fault, so max_steps is only a backstop. It counts control
    # periods, not chunks: on a loaded machine the fault chunk (the 3rd) is planned later and fewer
    # periods follow it, and 80 once ran out before the 10 limited commands of the persistent-limit
    # stop. A run that ends on time costs no more with a larger backstop.
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla.config import DeployConfig
    from vla.data.recorder import EpisodeRecorder
    from vla.deploy import Deployer

    uses_bridge = scenario in ("link_dropped", "bridge_restarted")
    backend = "rosbridge" if uses_bridge else "ros2"
    cfg = RobotConfig(backend=backend, safety=SafetyConfig(**LIMITS))
    from envs.robot.twin import EPISODE_TOPIC, RESET_TOPIC, SUCCESS_TOPIC

    cfg.topics.success, cfg.topics.reset, cfg.topics.episode = SUCCESS_TOPIC, RESET_TOPIC, EPISODE_TOPIC
    if uses_bridge:
        cfg.rosbridge_port = bridge.port

    server = None

    def inject() -> None:  # environment faults, started when the policy's fault chunk is planned
        if scenario == "server_killed":
            threading.Timer(0.0, server.stop).start()
        elif scenario == "stale_observation":
            threading.Timer(0.1, twin.muted.add, ("wrist",)).start()
        elif scenario == "link_dropped":
            threading.Timer(0.1, bridge.stop).start()  # mid-chunk
        elif scenario == "bridge_restarted":
            threading.Timer(0.1, bridge.restart).start()

    faulty = FaultyRuntime(runtime, scenario, on_fault=inject)
    if scenario in SERVER_FAULTS:  # the loop by the arm, the (faulty) policy behind a websocket
        from vla.remote import RemotePolicy
        from vla.serve import PolicyServer, metadata_of

        server = PolicyServer(faulty, metadata_of(runtime, "fault-injection", ""))
        port = server.start("127.0.0.1", 0)
        policy = RemotePolicy(f"ws://127.0.0.1:{port}", timeout=SERVER_TIMEOUT).connect()
    else:
        policy = faulty
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a fresh dataset: its frames are this run's
    out.mkdir(parents=True)
    robot = make_robot(cfg, log_path=out / "interventions.jsonl")
    recorder = EpisodeRecorder(out / "data", {**robot.observation_features, **robot.action_features})
    deploy_cfg = DeployConfig(max_steps=max_steps, stop_on_success=False, max_inference_seconds=2.0)
    try:
        with robot:
            robot.reset_episode(1000 + SCENARIOS.index(scenario))
            first = len(twin.commands)
            result = Deployer(robot, policy, deploy_cfg, recorder=recorder).run_episode()
            time.sleep(max(twin.command_timeout, 0.2) + 0.2)  # let a hold, or the twin's own timeout, land
            if result.fault_time is not None and not uses_bridge:
                # the link is up, so the driver's hold is on its way: on a loaded machine DDS can
                # take longer than the settle time above to deliver it
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and not any(
                        c["time"] >= result.fault_time for c in twin.commands[first:]):
                    time.sleep(0.05)
            received = twin.commands[first:]
    finally:
        twin.muted.clear()
        recorder.close()
        if server is not None:
            policy.close()
            server.stop()
        if uses_bridge and not bridge.alive:
            bridge.start()
    frames = LeRobotDataset("local/data", root=out / "data").meta.total_frames
    r = ScenarioResult(scenario, backend, result.stopped, result.message, result.steps, frames,
                       robot.commands_sent, robot.commands_changed, len(received))
    r.violations = check_commands(received, cfg.safety, 1.0 / cfg.control_hz)
    if result.fault_time is not None:
        # After the fault the loop sends nothing but holds: the first command the twin received
        # after detection is the hold. With the link gone none arrives, and the twin's own
        # command timeout holds the arm (as a real controller's does).
        after = [c for c in received if c["time"] >= result.fault_time]
        if after:
            r.hold_after_s, r.held_by = after[0]["time"] - result.fault_time, "driver"
        else:
            last = received[-1]["time"] if received else result.fault_time
            r.hold_after_s, r.held_by = max(last + twin.command_timeout - result.fault_time, 0.0), "twin timeout"
    return r


def report(results: list[ScenarioResult], machine: str) -> str:
    from benchmarks.common import markdown_table

    rows = [[r.scenario, r.backend, r.stopped, f"{r.steps} / {r.frames_recorded}", str(r.commands_sent),
             str(r.commands_changed), str(len(r.violations)),
             "n/a" if r.hold_after_s is None else f"{r.hold_after_s * 1000:.0f} ms ({r.held_by})",
             r.message.split(":")[0] if r.message else ""] for r in results]
    table = markdown_table(["fault", "bridge", "run ended by", "steps / frames recorded", "commands sent",
                            "changed by safety", "outside limits at the arm", "fault -> holding", "message"], rows)
    changed = sum(r.commands_changed for r in results)
    sent = sum(r.commands_sent for r in results)
    return (f"{machine}\n\n{len(results)} faults injected, one per run, into a policy deployed to the digital twin "
            f"at 20 Hz; the safety layer changed {changed} of {sent} commands. \"fault -> holding\" is the time "
            f"from the safety layer detecting the fault to the arm being told to hold (driver), or, with the "
            f"link gone, to the twin's own command timeout holding it.\n\n{table}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="outputs/demo/run")
    ap.add_argument("--out", default="outputs/faults")
    ap.add_argument("--scenarios", nargs="*", default=SCENARIOS)
    args = ap.parse_args()
    import os

    os.environ.setdefault("ROS_DOMAIN_ID", "77")
    from benchmarks.common import machine, write_section
    from envs.robot.rosbridge_server import RosbridgeServer
    from envs.robot.twin import DigitalTwin
    from vla.checkpoint import load_policy
    from vla.runtime import RuntimePolicy

    runtime = RuntimePolicy(*load_policy(args.checkpoint))
    results = []
    with DigitalTwin(RobotConfig()) as twin, RosbridgeServer(port=0) as bridge:
        for scenario in args.scenarios:
            r = run_scenario(scenario, runtime, twin, Path(args.out) / scenario, bridge=bridge)
            print(f"{scenario}: {r}")
            results.append(r)
    body = report(results, machine())
    print(body)
    write_section("Fault injection (deploy to the digital twin)", body)


if __name__ == "__main__":
    main()
