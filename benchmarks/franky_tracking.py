"""How much of each 20 Hz end-effector delta the franky backend achieves: motion-per-target vs the impedance tracker.

    PYTHONPATH=. python -m benchmarks.franky_tracking [--rounds 2]

Against franky-sim (a MuJoCo Franka served over the libfranka protocol), starting at rest in HOME,
one fixed command sequence is streamed through `FrankyRobot.send_action` at 20 Hz, the state read
once per period (the policy loop's pattern), with the bare backend (no safety layer, so every mode
gets exactly the same commands). The sequence, in the base frame (translation_scale 0.05: an
action of 1 is 5 cm per step), with the gripper kept:

    a 12 cm square in the y-z plane, each side at another speed: 1, 2, 3 and 4 cm per step
    2 x 5 cm out along +x and back
    a sine in y, peaking at 3 cm per step (24 steps, one period)
    a rotation about z, 0.05 rad per step, 6 steps out and 6 back (position kept)

The translation sums to zero, so the commanded path ends where it began. Modes:

    motion     today's default: an absolute CartesianMotion per target (Ruckig replans from the current
               state), at franky_dynamics_factor 0.2 (configs/robot/franky.yaml) and 0.5 (the tests')
    tracker    one CartesianImpedanceTrackingMotion whose reference each command moves (control="tracker"),
               at franky's default stiffness (500 N/m, 50 Nm/rad), 1500/150 and the backend's default
               3000/300; rotational stiffness a tenth of the translational

Reported per mode (mean over rounds): achieved / commanded displacement per translation step (the
achieved step projected on the commanded one, measured from the state each command was computed
from to the next), the same for rotation steps, the RMS and final error against the summed
commanded path, the tracking lag (the time shift that best aligns the achieved per-step motion
with the commanded one), the p99 duration of send_action, and errors. Results go to
benchmarks/franky_tracking.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from benchmarks.common import machine, markdown_table, write_section

PERIOD = 0.05
OUT = Path(__file__).with_suffix(".json")
MODES = {  # name: FrankyRobot keyword arguments and RobotConfig overrides
    "motion, dynamics 0.2": ({"control": "motion"}, {"franky_dynamics_factor": 0.2}),
    "motion, dynamics 0.5": ({"control": "motion"}, {"franky_dynamics_factor": 0.5}),
    "tracker, 500 N/m (franky's default)": ({"control": "tracker", "tracker_stiffness": (500.0, 50.0)}, {}),
    "tracker, 1500 N/m": ({"control": "tracker", "tracker_stiffness": (1500.0, 150.0)}, {}),
    "tracker, 3000 N/m (the backend's)": ({"control": "tracker", "tracker_stiffness": (3000.0, 300.0)}, {}),
}


def command_sequence() -> np.ndarray:
    """(n, 7) eef_delta actions: dpos (x 5 cm), daxis-angle (x 0.5 rad), gripper (0 = keep)."""
    steps = []

    def segment(dpos=(0, 0, 0), drot=(0, 0, 0), n=1):
        steps.extend([np.r_[dpos, drot, 0.0]] * n)

    segment(dpos=(0, 0.2, 0), n=12)    # +y 12 cm at 1 cm/step
    segment(dpos=(0, 0, 0.4), n=6)     # +z 12 cm at 2 cm/step
    segment(dpos=(0, -0.6, 0), n=4)    # -y 12 cm at 3 cm/step
    segment(dpos=(0, 0, -0.8), n=3)    # -z 12 cm at 4 cm/step
    segment(dpos=(1.0, 0, 0), n=2)     # +x 10 cm at 5 cm/step
    segment(dpos=(-1.0, 0, 0), n=2)    # and back
    for k in range(24):                # a sine in y, up to 3 cm/step, summing to zero
        segment(dpos=(0, 0.6 * np.sin(2 * np.pi * (k + 0.5) / 24), 0))
    segment(drot=(0, 0, 0.1), n=6)     # 0.05 rad/step about z
    segment(drot=(0, 0, -0.1), n=6)
    return np.array(steps, dtype=np.float64)


def lag_steps(achieved: np.ndarray, commanded: np.ndarray, max_lag: float = 8.0) -> float:
    """The shift (in steps) of the commanded per-step motion that best explains the achieved one (least squares,
    with a free gain)."""
    t = np.arange(len(commanded), dtype=np.float64)
    best, best_err = 0.0, np.inf
    for tau in np.arange(0.0, max_lag, 0.05):
        shifted = np.stack([np.interp(t - tau, t, commanded[:, i], left=0.0) for i in range(commanded.shape[1])], 1)
        denom = float((shifted * shifted).sum())
        if denom == 0:
            continue
        gain = float((shifted * achieved).sum()) / denom
        err = float(((achieved - gain * shifted) ** 2).sum())
        if err < best_err:
            best, best_err = float(tau), err
    return best


def run_mode(host: str, robot_kwargs: dict, config_overrides: dict) -> dict:
    from envs.robot.config import RobotConfig
    from envs.robot.franky import FrankyRobot

    actions = command_sequence()
    config = RobotConfig(**{**dict(backend="franky", franky_host=host, cameras=[], base_position=[0.0, 0.0, 0.0],
                                   franky_dynamics_factor=0.5), **config_overrides})
    scale_t, scale_r = config.translation_scale, config.rotation_scale
    positions, rotations, durations, errors = [], [], [], []
    robot = FrankyRobot(config, **robot_kwargs)
    robot.connect()
    try:
        next_tick = time.monotonic()
        for action in actions:
            state = robot.read_state()
            positions.append(state.eef_pos.copy())
            rotations.append(state.eef_rot.copy())
            start = time.monotonic()
            try:
                robot.send_action(action)
            except Exception as e:  # a RobotError or LinkLost: recorded, and the run ends
                errors.append(f"{type(e).__name__}: {e}")
                break
            durations.append(time.monotonic() - start)
            next_tick += PERIOD
            time.sleep(max(0.0, next_tick - time.monotonic()))
        # the state one period after the last command (the loop slept it), then one per period until the arm
        # is at rest (at most 3 s): the final pose
        after = previous = robot.read_state()
        still, deadline = 0, time.monotonic() + 3.0
        while still < 3 and time.monotonic() < deadline:
            time.sleep(PERIOD)
            state = robot.read_state()
            moving = np.linalg.norm(state.eef_pos - previous.eef_pos) > 1e-4
            still, previous = (0 if moving else still + 1), state
        final = previous
    finally:
        robot.disconnect()
    n = len(durations)  # commands sent
    if errors:
        return {"errors": errors, "steps_sent": n}
    positions.append(after.eef_pos.copy())
    rotations.append(after.eef_rot.copy())
    p = np.array(positions)
    commanded = actions[:, :3] * scale_t
    achieved = np.diff(p, axis=0)
    moving = np.linalg.norm(commanded, axis=1) > 0
    ratios = [float(a @ c / (c @ c)) for a, c in zip(achieved[moving], commanded[moving])]
    speeds = np.round(np.linalg.norm(commanded[moving], axis=1) * 100).astype(int)  # cm per step
    by_speed = {(f"{v} cm" if v else "<0.5 cm"): float(np.mean(np.array(ratios)[speeds == v]))
                for v in sorted(set(speeds.tolist()))}
    rot_ratios = []
    for k in np.flatnonzero(np.linalg.norm(actions[:, 3:6], axis=1) > 0):
        cmd = actions[k, 3:6] * scale_r
        got = Rotation.from_matrix(rotations[k + 1] @ rotations[k].T).as_rotvec()
        rot_ratios.append(float(got @ cmd / (cmd @ cmd)))
    summed = p[0] + np.r_[np.zeros((1, 3)), np.cumsum(commanded, axis=0)]  # the summed commanded path
    path_error = np.linalg.norm(p - summed, axis=1)
    final_error = float(np.linalg.norm(final.eef_pos - summed[-1]))
    return {
        "errors": errors, "steps_sent": n,
        "step_ratio_mean": float(np.mean(ratios)), "step_ratio_min": float(np.min(ratios)),
        "step_ratio_max": float(np.max(ratios)), "step_ratio_by_speed": by_speed,
        "path_ratio": float(sum(a @ c / np.linalg.norm(c) for a, c in zip(achieved[moving], commanded[moving]))
                            / np.linalg.norm(commanded[moving], axis=1).sum()),
        "rotation_ratio_mean": float(np.mean(rot_ratios)),
        "path_rms_error_mm": float(np.sqrt(np.mean(path_error ** 2)) * 1000),
        "final_error_mm": final_error * 1000,
        "final_rotation_error_rad": float(np.linalg.norm(
            Rotation.from_matrix(final.eef_rot @ rotations[0].T).as_rotvec())),  # the rotations sum to zero too
        "lag_ms": lag_steps(achieved[: len(commanded)], commanded) * PERIOD * 1000,
        "send_p99_ms": float(np.percentile(durations, 99) * 1000),
    }


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r["errors"]]
    summary = {"runs": len(runs), "failed_runs": len(runs) - len(ok),
               "errors": sorted({e for r in runs for e in r["errors"]})}
    if ok:
        summary["step_ratio_by_speed"] = {k: float(np.mean([r["step_ratio_by_speed"][k] for r in ok]))
                                          for k in ok[0]["step_ratio_by_speed"]}
    for key in ("step_ratio_mean", "path_ratio", "rotation_ratio_mean", "path_rms_error_mm", "final_error_mm",
                "final_rotation_error_rad", "lag_ms", "send_p99_ms"):
        values = [r[key] for r in ok]
        summary[key] = float(np.mean(values)) if values else None
    return summary


def table(summaries: dict[str, dict]) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    rows = [[name, f(s["step_ratio_mean"], ".2f"), f(s["path_ratio"], ".2f"), f(s["rotation_ratio_mean"], ".2f"),
             f"{f(s['path_rms_error_mm'], '.1f')} mm", f"{f(s['final_error_mm'], '.1f')} mm",
             f"{f(s['lag_ms'], '.0f')} ms", f"{f(s['send_p99_ms'], '.1f')} ms",
             f"{s['failed_runs']}/{s['runs']} runs" + (f": {'; '.join(s['errors'])[:200]}" if s["errors"] else "")]
            for name, s in summaries.items()]
    return markdown_table(["mode", "achieved/commanded per step", "path ratio", "rotation per step",
                           "path RMS error", "final error", "lag", "send p99", "errors"], rows)


def section(summaries: dict[str, dict]) -> str:
    """The RESULTS.md section: the table and the achieved fraction by commanded step size."""
    by_speed = [f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.get("step_ratio_by_speed", {}).items())
                for name, s in summaries.items()]
    return (f"## franky: how much of each 20 Hz delta the arm achieves (`python -m benchmarks.franky_tracking`)\n\n"
            f"{machine()}. franky-sim (MuJoCo at 1 kHz, wall clock), one fixed 3.25 s path of end-effector deltas "
            "streamed through the bare backend; see the module docstring.\n\n" + table(summaries)
            + "\n\nAchieved / commanded by commanded step size:\n\n" + "\n".join(by_speed) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of every mode, interleaved")
    ap.add_argument("--modes", nargs="*", default=list(MODES), help=f"a subset of {list(MODES)}")
    args = ap.parse_args()

    from envs.robot.franky_sim import HOME, home_franky_sim, start_franky_sim, stop_franky_sim

    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    log = Path(tempfile.mkdtemp(prefix="franky-tracking-")) / "franky-sim.log"
    proc, host = start_franky_sim(log)
    try:
        for r in range(args.rounds):
            for mode in args.modes:
                home_franky_sim(host, HOME)
                result = run_mode(host, *MODES[mode])
                runs[mode].append(result)
                print(f"round {r + 1}/{args.rounds} {mode}: " + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
    finally:
        stop_franky_sim(proc)
    summaries = {m: summarize(v) for m, v in runs.items()}
    print(section(summaries))
    write_section("franky-tracking", section(summaries))
    OUT.write_text(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "sim": "franky-sim -s mujoco (1 kHz, wall clock), arm starting at rest in HOME",
        "sequence": "see the module docstring; 20 Hz, bare FrankyRobot (no safety layer)",
        "summary": summaries, "runs": runs}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
