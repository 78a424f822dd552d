"""A policy trained at the tabletop's speed on an arm limited to 0.25 m/s, with and without time scaling.

    PYTHONPATH=. python -m benchmarks.arm_speed --checkpoint outputs/demo/run --task lift --episodes 30

The tabletop's policies command up to 5 cm per 50 ms step (1 m/s); `franka-ros2.yaml` limits the
arm to 0.25 m/s. Three settings, each a `vla deploy robot=sim` run on the same held-out seeds
(lockstep sim, synchronous inference; `benchmarks/rtc.py` says why):

    tabletop limits        robot.safety as in training (1 m/s)
    0.25 m/s               robot.safety.max_eef_speed=0.25: commands beyond it are clipped, and 40 in a
                           row stop the episode (robot.safety.max_consecutive_limited)
    0.25 m/s, time_scale   the same limit with deploy.time_scale=4: each policy step spread over 4 periods

Reported: success with a Wilson 95% interval, the fraction of commands the safety layer changed,
safety stops, and the arm time per episode. Results go to ``benchmarks/arm_speed.json`` (resumable)
and RESULTS.md.
"""

from __future__ import annotations

import json

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.rtc import deploy_arguments, run_deploy

SETTINGS = {"tabletop limits (1 m/s)": [],
            "0.25 m/s": ["robot.safety.max_eef_speed=0.25"],
            "0.25 m/s, time_scale 4": ["robot.safety.max_eef_speed=0.25", "deploy.time_scale=4"]}


def table(results: dict, task: str) -> str:
    from vla.report import wilson_interval

    rows = []
    for name in SETTINGS:
        r = results.get(f"{task}|{name}")
        if r is None:
            continue
        lo, hi = wilson_interval(r["successes"], r["episodes"])
        rows.append([name, f"{r['successes']}/{r['episodes']} = {r['successes'] / r['episodes']:.0%} "
                     f"[{lo:.0%}, {hi:.0%}]", f"{r['commands_changed'] / max(r['commands_sent'], 1):.0%}",
                     str(r["safety_stops"]), f"{r['arm_seconds_per_episode']:.1f}"])
    return markdown_table(["limits", "success [95% CI]", "commands changed by the safety layer",
                           "episodes stopped by safety", "arm time per episode (s)"], rows)


def main(argv: list[str] | None = None) -> None:
    args = deploy_arguments(__doc__, "arm_speed").parse_args(argv)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for name, overrides in SETTINGS.items():
        key = f"{args.task}|{name}"
        if key in results and results[key]["checkpoint"] == str(args.checkpoint):
            continue
        out = args.out / args.task / f"setting{list(SETTINGS).index(name)}"  # Hydra's grammar: no parentheses
        out.parent.mkdir(parents=True, exist_ok=True)
        s, command = run_deploy(args, overrides, out)
        scale = 4 if "deploy.time_scale=4" in overrides else 1
        results[key] = {"checkpoint": str(args.checkpoint), "episodes": s["episodes"], "successes": s["successes"],
                        "commands_sent": s["safety"]["commands_sent"],
                        "commands_changed": s["safety"]["commands_changed"],
                        "interventions": s["safety"]["interventions"],
                        "safety_stops": sum(1 for x in s["stopped"] if x == "fault"),
                        "arm_seconds_per_episode": s["steps"] * scale / 20.0 / s["episodes"], "command": command}
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        print(table(results, args.task), flush=True)
    body = (f"## A real arm's speed limit: {args.task}\n\nCheckpoint `{args.checkpoint}`, {args.episodes} episodes "
            f"per row on the same seeds, lockstep sim; `python -m benchmarks.arm_speed --checkpoint {args.checkpoint} "
            f"--task {args.task}`.\n\n{table(results, args.task)}\n\n{machine()}.")
    write_section(f"arm-speed-{args.task}", body, args.markdown)


if __name__ == "__main__":
    main()
