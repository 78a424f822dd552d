"""Deploying a lift policy to the digital twin through each bridge, against rolling it out in sim.

    PYTHONPATH=. python -m benchmarks.deploy_twin --checkpoint outputs/demo/run --episodes 30

Runs the commands a user types, as separate processes, on the same seeds:

    sim        vla deploy robot=sim             lockstep simulation, synchronous inference (= vla eval)
    ros2-lockstep  vla twin robot=twin-lockstep  +  vla deploy robot=twin-lockstep   the same rollout
               through DDS (one twin step per command): a gap to `sim` is the middleware's, not the CPU's
    ros2       vla twin  +  vla deploy robot=twin              DDS on loopback, 20 Hz, async inference
    rosbridge  vla twin  +  rosbridge server  +  vla deploy robot=twin-rosbridge     JSON over a websocket

and reports success (95% Wilson CI), control-loop period and jitter (p50 / p99), latency from
reading an observation to sending its command (p50 / p99), inference latency, and the actions
skipped as stale. With franky-sim installed it also times the franky backend's loop (scripted
commands, no cameras: franky has none). Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, machine, markdown_table, write_section
from benchmarks.rtc import MAX_STEPS

VLA = [sys.executable, "-m", "vla.cli"]


def wilson(successes: int, n: int) -> tuple[float, float]:
    from vla.report import wilson_interval

    return wilson_interval(successes, n)


def deploy(robot: str, out: Path, args, extra: list[str] = ()) -> dict:
    cmd = [*VLA, "deploy", f"robot={robot}", f"robot.sim_task={args.task}", f"deploy.checkpoint={args.checkpoint}",
           f"deploy.output_dir={out}", f"deploy.episodes={args.episodes}", f"deploy.seed={args.seed}",
           f"deploy.max_steps={MAX_STEPS.get(args.task, 250)}", "deploy.record=false", *extra]
    print(" ".join(cmd[2:]), flush=True)
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    return json.loads((out / "summary.json").read_text())


def with_twin(fn, task: str, robot: str = "twin"):
    """Run fn() while `vla twin robot=<robot>` serves the tabletop Panda in its own process."""
    twin = subprocess.Popen([*VLA, "twin", f"robot={robot}", f"robot.sim_task={task}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    try:
        time.sleep(8.0)  # robosuite start-up
        return fn()
    finally:
        twin.terminate()
        twin.wait(timeout=20)


def franky_loop(seconds: float = 10.0) -> dict | None:
    """The franky backend's control loop against franky-sim: period and read->command latency."""
    try:
        import franky  # noqa: F401
        import franky_sim  # noqa: F401
    except ImportError:
        return None
    import numpy as np

    from envs.robot import RobotConfig, make_robot
    from envs.robot.franky_sim import FrankySimServer
    from vla.deploy_report import percentiles_ms

    cfg = RobotConfig(backend="franky", cameras=[], base_position=[0.0, 0.0, 0.0])
    cfg.safety.workspace_low, cfg.safety.workspace_high = [-1.0, -1.0, 0.0], [1.0, 1.0, 1.5]
    periods, latencies = [], []
    with FrankySimServer() as sim:
        cfg.franky_host = sim.host
        robot = make_robot(cfg)
        robot.connect()
        period, next_tick, last = 1.0 / cfg.control_hz, time.monotonic(), None
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:  # a small circle in the horizontal plane
            tick = time.monotonic()
            robot.read_state()
            robot.send_action(np.array([0.1 * np.sin(k / 10), 0.1 * np.cos(k / 10), 0, 0, 0, 0, -1.0]))
            now = time.monotonic()
            latencies.append(now - tick)
            if last is not None:
                periods.append(now - last)
            last, k = now, k + 1
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        robot.disconnect()
    return {"period_ms": percentiles_ms(periods), "jitter_ms": percentiles_ms([abs(p - period) for p in periods]),
            "obs_to_command_ms": percentiles_ms(latencies), "steps": len(periods) + 1}


def row(name: str, s: dict) -> list[str]:
    if s.get("success_rate") is not None:
        lo, hi = wilson(s["successes"], s["episodes"])
        success = f"{s['success_rate']:.0%} ({s['successes']}/{s['episodes']}) [{lo:.0%}, {hi:.0%}]"
    else:
        success = "n/a"

    def ms(d: dict | None) -> str:
        return "n/a" if not d or d.get("p50") is None else f"{d['p50']:.1f} / {d['p99']:.1f}"

    return [name, success, ms(s.get("period_ms")), ms(s.get("jitter_ms")), ms(s.get("obs_to_command_ms")),
            ms(s.get("inference_ms")), str(s.get("stale_actions_skipped", "n/a")), str(s.get("held_steps", "n/a"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="outputs/demo/run")
    ap.add_argument("--task", default="lift", help="the tabletop task (robot.sim_task) of the checkpoint")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=100_000)  # vla eval's held-out seeds
    ap.add_argument("--out", default="outputs/deploy_twin")
    ap.add_argument("--only", nargs="*", default=["sim", "ros2", "ros2-sync", "ros2-lockstep", "rosbridge", "franky"])
    args = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", "78")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if "sim" in args.only:
        results["sim (lockstep, sync inference)"] = deploy("sim", out / "sim", args, ["deploy.async_inference=false"])
    if "ros2" in args.only:
        results["twin over ros2 (DDS)"] = with_twin(lambda: deploy("twin", out / "ros2", args), args.task)
    if "ros2-sync" in args.only:  # the loop blocks while it infers: tells latency from twin dynamics
        results["twin over ros2, sync inference"] = with_twin(
            lambda: deploy("twin", out / "ros2-sync", args, ["deploy.async_inference=false"]), args.task)
    if "ros2-lockstep" in args.only:  # the twin steps per command: the middleware without the clock
        results["twin over ros2, lockstep"] = with_twin(
            lambda: deploy("twin-lockstep", out / "ros2-lockstep", args, ["deploy.async_inference=false"]),
            args.task, robot="twin-lockstep")
    if "rosbridge" in args.only:
        from envs.robot.rosbridge_server import RosbridgeServer

        def through_bridge():
            with RosbridgeServer(port=9090):
                return deploy("twin-rosbridge", out / "rosbridge", args)

        results["twin over rosbridge (websocket)"] = with_twin(through_bridge, args.task)
    if "franky" in args.only:
        loop = franky_loop()
        if loop is not None:
            results["franky-sim (scripted, no cameras)"] = loop
    for name, s in results.items():
        print(name, json.dumps({k: v for k, v in s.items() if k != "protocol"}, default=str)[:600])
    table = markdown_table(["run", "success (95% CI)", "period ms p50 / p99", "jitter ms p50 / p99",
                            "obs -> command ms p50 / p99", "inference ms p50 / p99", "stale skipped", "held steps"],
                           [row(k, v) for k, v in results.items()])
    body = (f"{machine()}\n\n`{args.checkpoint}` on `{args.task}`, {args.episodes} episodes on seeds {args.seed}.."
            f"{args.seed + args.episodes - 1} (the same for every run), {MAX_STEPS.get(args.task, 250)} steps at "
            "most, 20 Hz. The twin is a "
            "separate `vla twin` process; policy, twin and bridge share the 2 cores.\n\n" + table + "\n")
    print(body)
    title = "Deploy to the digital twin: success and control-loop timing per bridge"
    write_section(title if args.task == "lift" else f"{title} ({args.task})", body)


if __name__ == "__main__":
    main()
