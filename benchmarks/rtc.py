"""Real-time chunking against stale-action skipping, under injected inference delays.

    PYTHONPATH=. python -m benchmarks.rtc --checkpoint outputs/demo/run --task lift --episodes 30

Each setting is one `vla deploy robot=sim` run on the lockstep tabletop sim, synchronous
inference with ``deploy.inject_delay_ms``: a chunk takes effect delay / period control steps
after the observation it was computed from, the current plan running meanwhile. That is
asynchronous inference's timing, exact and repeatable, without the wall clock: on this 2-core
machine a real-time run would mix the delay with CPU starvation (the simulator renders two
cameras in ~70 ms of each 50 ms period). Every setting runs the same episode seeds.

Modes: ``skip`` (today's default: actions the chunk arrives too late for are skipped),
``rtc-inpaint`` and ``rtc-guidance`` (`deploy.rtc=true` with each `deploy.rtc_method`), and each
with ``-hard`` (`deploy.rtc_mask=hard`: only the frozen actions are pulled onto the plan), and
``rtc-condition`` (training-time RTC: a checkpoint trained with ``policy.rtc_train_max_delay`` takes
the frozen actions as input). ``--label`` keeps one checkpoint's rows apart from another's on the
same task (default: the task).
Reported per setting: success with a Wilson 95% interval, the smoothness of the commands at
chunk boundaries and within chunks (mean |a_t - 2 a_(t-1) + a_(t-2)|, gripper excluded) and
inference time. Results are kept per (task, delay, mode) in ``benchmarks/rtc.json`` (a killed
run resumes where it stopped) and tabled in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO, RESULTS, machine, markdown_table, write_section

MODES = {"skip": [], "rtc-inpaint": ["deploy.rtc=true", "deploy.rtc_method=inpaint"],
         "rtc-guidance": ["deploy.rtc=true", "deploy.rtc_method=guidance"],
         # the paper's hard-masking ablation: only the frozen (delayed) actions are pulled onto the plan
         "rtc-inpaint-hard": ["deploy.rtc=true", "deploy.rtc_method=inpaint", "deploy.rtc_mask=hard"],
         "rtc-guidance-hard": ["deploy.rtc=true", "deploy.rtc_method=guidance", "deploy.rtc_mask=hard"],
         # training-time RTC: a policy trained with policy.rtc_train_max_delay continues the frozen actions
         "rtc-condition": ["deploy.rtc=true", "deploy.rtc_method=condition"]}
MAX_STEPS = {"lift": 150, "stack": 250, "place": 250}  # the tasks' own episode lengths


def run_deploy(args, overrides: list[str], out: Path) -> tuple[dict, str]:
    """One `vla deploy robot=sim` run of ``args.episodes`` episodes on the held-out seeds, synchronous
    inference, nothing recorded; (its summary.json, the command)."""
    cmd = [sys.executable, "-m", "vla.cli", "deploy", "robot=sim", f"robot.sim_task={args.task}",
           f"deploy.checkpoint={args.checkpoint}", f"deploy.output_dir={out}", f"deploy.episodes={args.episodes}",
           f"deploy.seed={args.seed}", f"deploy.max_steps={args.max_steps or MAX_STEPS.get(args.task, 250)}",
           "deploy.record=false",
           "deploy.async_inference=false", f"deploy.threads={args.threads}", *overrides]
    print(" ".join(cmd[2:]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    with open(out.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if rc not in (0, 3):  # 3: the last episode ended on a safety stop, which is a result here
        raise SystemExit(f"{' '.join(cmd[2:])} failed ({rc}); see {out.with_suffix('.log')}")
    return json.loads((out / "summary.json").read_text()), " ".join(cmd[2:])


def run_setting(args, delay: float, mode: str, out: Path) -> dict:
    s, command = run_deploy(args, [f"deploy.inject_delay_ms={delay:g}", *MODES[mode]], out)
    return {"task": args.task, "label": args.label, "delay_ms": delay, "mode": mode, "checkpoint": str(args.checkpoint),
            "episodes": s["episodes"], "successes": s["successes"], "boundary_jerk": s["boundary_jerk"],
            "within_chunk_jerk": s["within_chunk_jerk"], "inference_ms_p50": s["inference_ms"]["p50"],
            "stale_actions_skipped": s["stale_actions_skipped"], "held_steps": s["held_steps"],
            "seeds": s["protocol"]["seeds"], "command": command}


def table(results: dict, label: str) -> str:
    from vla.report import wilson_interval

    rows = []
    mine = (r for r in results.values() if r.get("label", r["task"]) == label)
    for r in sorted(mine, key=lambda r: (r["delay_ms"], r["mode"])):
        lo, hi = wilson_interval(r["successes"], r["episodes"])
        ratio = r["boundary_jerk"] / r["within_chunk_jerk"] if r["boundary_jerk"] and r["within_chunk_jerk"] else None
        rows.append([f"{r['delay_ms']:g} ms", r["mode"], f"{r['successes']}/{r['episodes']} = "
                     f"{r['successes'] / r['episodes']:.0%} [{lo:.0%}, {hi:.0%}]", f"{r['boundary_jerk']:.3f}",
                     f"{r['within_chunk_jerk']:.3f}", "n/a" if ratio is None else f"{ratio:.2f}",
                     f"{r['inference_ms_p50']:.0f}"])
    return markdown_table(["injected delay", "mode", "success [95% CI]", "jerk at chunk boundaries",
                           "jerk within chunks", "ratio", "inference p50 (ms)"], rows)


def deploy_arguments(doc: str, name: str) -> argparse.ArgumentParser:
    """The options every lockstep-sim deploy benchmark takes; results in benchmarks/<name>.json."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--task", default="lift")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=100_000, help="the first episode's seed (held out from training)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the task's)")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / name)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / f"{name}.json")
    ap.add_argument("--markdown", type=Path, default=RESULTS)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = deploy_arguments(__doc__, "rtc")
    ap.add_argument("--delays", type=float, nargs="+", default=[0, 100, 200, 300], help="injected ms")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--label", default=None, help="names this checkpoint's rows and section (default: the task)")
    args = ap.parse_args(argv)
    args.label = args.label or args.task
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for delay in args.delays:
        for mode in args.modes:
            key = f"{args.label}|{delay:g}|{mode}"
            if key in results and results[key]["checkpoint"] == str(args.checkpoint):
                continue
            out = args.out / args.label / f"{delay:g}ms-{mode}"
            out.parent.mkdir(parents=True, exist_ok=True)
            results[key] = run_setting(args, delay, mode, out)
            args.results.write_text(json.dumps(results, indent=1) + "\n")  # after every setting: resumable
            print(table(results, args.label), flush=True)
    body = (f"## Real-time chunking under injected delays: {args.label}\n\n"
            f"Checkpoint `{args.checkpoint}`; lockstep sim, synchronous inference with `deploy.inject_delay_ms` "
            f"(a chunk takes effect delay / 50 ms steps after its observation), {args.episodes} episodes per row on "
            f"the same seeds; `python -m benchmarks.rtc --checkpoint {args.checkpoint} --task {args.task}"
            f"{'' if args.label == args.task else ' --label ' + args.label}`.\n\n"
            f"{table(results, args.label)}\n\n{machine()}, {args.threads} thread(s) per run.")
    write_section(f"rtc-{args.label}", body, args.markdown)


if __name__ == "__main__":
    main()
