"""What a `vla deploy` run reports: each episode's record, the run's summary.json and report.md
(success, control-loop timing, inference, smoothness at chunk boundaries, safety interventions)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.robot.safety import SafeRobot


@dataclass
class EpisodeResult:
    steps: int = 0
    seconds: float = 0.0
    success: bool | None = None
    stopped: str = "max_steps"            # max_steps | success | fault | interrupted
    message: str = ""
    chunks: int = 0
    stale_skipped: int = 0                # planned actions dropped because inference made them late
    held_steps: int = 0                   # steps with no planned action (waiting for a chunk)
    overruns: int = 0                     # periods the loop could not keep
    fault_time: float | None = None       # time.monotonic() when the fault that ended the run was detected
    periods: list[float] = field(default_factory=list)      # s between consecutive commands
    latencies: list[float] = field(default_factory=list)    # s per inference
    obs_to_command: list[float] = field(default_factory=list)  # s from reading an observation to its command
    dataset_episode: int | None = None
    # smoothness: |a_t - 2 a_(t-1) + a_(t-2)| of the sent commands (all but the gripper), at the first
    # step of each new chunk and at every other step with two planned steps before it
    boundary_jerk: list[float] = field(default_factory=list)
    within_chunk_jerk: list[float] = field(default_factory=list)


def percentiles_ms(seconds: list[float], qs=(50, 99)) -> dict[str, float | None]:
    """{"p50": ms, "p99": ms} of durations given in seconds; None where there are none."""
    if not seconds:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": 1000 * float(np.percentile(seconds, q)) for q in qs}


def summarize(results: list[EpisodeResult], robot: SafeRobot, protocol: dict) -> dict:
    periods = [p for r in results for p in r.periods]
    target = 1.0 / robot.config.control_hz
    known = [r.success for r in results if r.success is not None]
    return {
        "protocol": protocol,
        "episodes": len(results),
        "successes": sum(bool(s) for s in known) if known else None,
        "success_rate": (sum(bool(s) for s in known) / len(known)) if known else None,
        "steps": sum(r.steps for r in results),
        "stopped": [r.stopped for r in results],
        "messages": [r.message for r in results if r.message],
        "period_ms": percentiles_ms(periods),
        "jitter_ms": percentiles_ms([abs(p - target) for p in periods]),
        "inference_ms": percentiles_ms([x for r in results for x in r.latencies]),
        "obs_to_command_ms": percentiles_ms([x for r in results for x in r.obs_to_command]),
        "chunks": sum(r.chunks for r in results),
        "stale_actions_skipped": sum(r.stale_skipped for r in results),
        "held_steps": sum(r.held_steps for r in results),
        "boundary_jerk": _mean([x for r in results for x in r.boundary_jerk]),
        "within_chunk_jerk": _mean([x for r in results for x in r.within_chunk_jerk]),
        "overruns": sum(r.overruns for r in results),
        "safety": robot.summary(),
        "dataset_episodes": [r.dataset_episode for r in results],
    }


def write_report(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    s, p = summary, summary["protocol"]
    rate = "n/a (nothing measures success on this robot)" if s["success_rate"] is None else \
        f"{s['success_rate']:.0%} ({s['successes']}/{s['episodes']})"
    lines = [
        f"# Deploy report: {p['checkpoint']} on {p['backend']}{' (dry run)' if p['dry_run'] else ''}", "",
        f"- episodes: {s['episodes']}, steps: {s['steps']}, ended by: {', '.join(s['stopped'])}",
        f"- success: {rate}",
        f"- control period (target {1000 / p['control_hz']:.0f} ms): p50 {_ms(s['period_ms']['p50'])}, "
        f"p99 {_ms(s['period_ms']['p99'])}; jitter p50 {_ms(s['jitter_ms']['p50'])}, p99 {_ms(s['jitter_ms']['p99'])}; "
        f"overruns {s['overruns']}",
        f"- inference ({'async' if p['async_inference'] else 'sync'}): {s['chunks']} chunks, "
        f"p50 {_ms(s['inference_ms']['p50'])}, p99 {_ms(s['inference_ms']['p99'])}; "
        f"stale actions skipped {s['stale_actions_skipped']}; held steps {s['held_steps']}",
        _smoothness_line(s, p),
        f"- observation to command: p50 {_ms(s['obs_to_command_ms']['p50'])}, p99 {_ms(s['obs_to_command_ms']['p99'])}",
        f"- safety: {s['safety']['commands_sent']} commands, {s['safety']['commands_changed']} changed; "
        f"interventions {s['safety']['interventions'] or 'none'}",
    ]
    if "server" in s:
        lines.append(f"- policy server {p.get('server')}: round trip p50 {_ms(s['server']['round_trip_ms']['p50'])}, "
                     f"p99 {_ms(s['server']['round_trip_ms']['p99'])}, of which on the server p50 "
                     f"{_ms(s['server']['server_ms']['p50'])}")
    lines += [f"- stop: {m}" for m in s["messages"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _smoothness_line(s: dict, p: dict) -> str:
    line = (f"- smoothness (|second difference| of the commands, gripper excluded): at chunk boundaries "
            f"{_num(s['boundary_jerk'])}, within chunks {_num(s['within_chunk_jerk'])}")
    if p["rtc"]:
        line += f"; real-time chunking ({p['rtc_method']}, {p['rtc_mask']} mask)"
    if p["inject_delay_ms"]:
        line += f"; injected delay {p['inject_delay_ms']:g} ms"
    return line


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"
