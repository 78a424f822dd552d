"""DUST on our tasks: DUST, DUST without the world-model stream, DUST with joint noise, and Dita.

Every row trains on the same dataset with the same budget (steps, batch, learning rate,
schedule, one observed frame) and is scored on the same held-out seeds (``vla eval``'s
protocol: episode k resets with seed 100000 + k). The DUST row is also evaluated with
test-time scaling, N_o in {4, 16, 32} vision steps at N_A = 4. Everything goes through the
``vla`` CLI, so each row is one command a user can rerun; finished rows are skipped, so a
killed run continues where it stopped. Writes the table into ``benchmarks/RESULTS.md``.

    python -m benchmarks.dust_ablation --tasks lift stack            # collect, train, evaluate
    python -m benchmarks.dust_ablation --report-only                 # rebuild the table
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, cell, ensure_dataset, machine, markdown_table, run_vla, train_seconds, write_section

# Shared by every row: the demo's CPU budget (configs/recipe/dita-cpu.yaml).
COMMON = ["policy.n_obs_steps=1", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=200",
          "train.save_every=1000"]
ROWS = {
    "DUST": ["policy=dust-small"],
    "DUST, lambda_wm = 0 (no world-model stream)": ["policy=dust-small", "policy.lambda_wm=0"],
    "DUST, joint noise (one time for both streams)": ["policy=dust-small", "policy.decoupled_noise=false"],
    "Dita": ["policy=dita-small", "policy.width=128", "policy.depth=4", "policy.heads=4", "policy.noise_samples=2"],
}
TTS = (4, 8)  # q: N_o = 16 and 32 at N_A = 4 (q = 1 is the DUST row itself)
DART = ["collect.action_noise=0.3", "collect.noise_dims=[0,1,2]"]


def slug(row: str) -> str:
    return {"DUST": "dust", "Dita": "dita"}.get(row, "dust_nowm" if "lambda" in row else "dust_joint")


def run_row(task: str, data: Path, out: Path, row: str, args) -> None:
    """Train one row (unless its checkpoint exists), then run its evaluations (unless reported)."""
    run = out / slug(row)
    run.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else None  # small matmuls: two 1-thread runs beat one 2-thread run
    last = run / "run" / "checkpoints" / "last"
    done_steps = int(last.resolve().name) if last.exists() else 0
    if done_steps < args.steps:  # a killed row resumes from its last checkpoint
        print(f"[{task}] training {row}" + (f" from step {done_steps}" if done_steps else ""), flush=True)
        run_vla("train", *(["--resume"] if done_steps else []), f"env={task}", f"dataset.root={data}",
            f"dataset.repo_id=local/{task}", f"output_dir={run / 'run'}",
            f"train.steps={args.steps}", *COMMON, *ROWS[row], log=run / "train.log", threads=threads)
    evals = [("eval", [])] + ([(f"eval_q{q}", [f"eval.test_time_scaling={q}"]) for q in TTS] if row == "DUST" else [])
    for name, extra in evals:
        if not (run / name / "report.json").exists():
            print(f"[{task}] evaluating {row} {' '.join(extra)}", flush=True)
            run_vla("eval", f"env={task}", f"output_dir={run / 'run'}", f"eval.output_dir={run / name}",
                f"eval.episodes={args.episodes}", *extra, log=run / f"{name}.log", threads=threads)


def run_task(task: str, data: Path, out: Path, args) -> None:
    ensure_dataset(str(data), args.demos, task, DART)
    with ThreadPoolExecutor(args.jobs) as pool:
        for job in [pool.submit(run_row, task, data, out, row, args) for row in ROWS]:
            job.result()


def report(tasks: list[str], out: Path) -> str:
    header = ["policy", *[f"{t}: success [95% CI]" for t in tasks], "train s / steps (first task)"]
    rows = []
    for row in ROWS:
        cells = [cell(out / t / slug(row) / "eval" / "report.json") for t in tasks]
        run = out / tasks[0] / slug(row)
        budget = "not run"
        if (run / "run" / "metrics.csv").exists():
            secs, steps = train_seconds(run / "run")
            budget = f"{secs:.0f} s / {steps}"
        rows.append([row, *cells, budget])
    tts = [[f"N_o = {4 * q}" if q > 1 else "N_o = 4 (default)",
            *[cell(out / t / "dust" / ("eval" if q == 1 else f"eval_q{q}") / "report.json") for t in tasks]]
           for q in (1, *TTS)]
    return (f"## DUST ablation on the tabletop tasks\n\n{machine()}. `python -m benchmarks.dust_ablation`. "
            "Each task: 100 expert demos with DART noise 0.3 on translation; every row the same "
            f"budget ({' '.join(COMMON)}, same steps) and the same 50 held-out seeds.\n\n"
            + markdown_table(header, rows)
            + "\n\nThe budget is the step count; the seconds are wall time as run (with `--jobs 2` two rows "
            "train at once, one thread each), so they are not a speed comparison: see the latency and "
            "throughput sections for that.\n\nTest-time scaling (the DUST row's checkpoint, N_A = 4 action steps):\n\n"
            + markdown_table(["vision steps", *[f"{t}: success [95% CI]" for t in tasks]], tts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["lift", "stack"])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "evidence")
    ap.add_argument("--data", nargs="*", default=[], help="task=path to reuse an existing dataset")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--demos", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1, help="rows trained at once (each with one thread when > 1)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    data = dict(d.split("=", 1) for d in args.data)
    if not args.report_only:
        for task in args.tasks:
            run_task(task, Path(data.get(task, args.out / task / "data")), args.out / task, args)
    # Report every task that has runs, not only the ones trained now: the section is shared.
    tasks = [t for t in ("lift", "stack", "place") if (args.out / t).is_dir()] or args.tasks
    text = report(tasks, args.out)
    print(text)
    write_section("dust-ablation", text)


if __name__ == "__main__":
    main()
