"""Learning quality side by side: every candidate trains for the same minutes on the same data,
then is evaluated on the same seeds through vla's own rollout.

    python -m benchmarks.quality --task lift --dataset outputs/quality/data/lift --env env=lift \\
        --candidates dita dust omnijarvis lerobot-act lerobot-diffusion --seeds 0 1 2 --budget-minutes 20
    python -m benchmarks.quality --table            # rewrite the RESULTS.md table from the JSON only

Candidates:
- vla recipes (``configs/recipe/``) through ``vla train`` with ``train.max_seconds`` = the budget
  (the recipe's warmup + cosine schedule then ends with the time); OmniJARVIS splits the budget
  between its two stages; every other recipe (an ablation such as ``dita-flow-cpu``) is a
  candidate under its own name;
- LeRobot policies (``configs/lerobot/<name>.yaml``) through ``benchmarks/lerobot_train.py``:
  LeRobot's classes, processors, optimizer and scheduler presets, and the changes the budget
  forces, each stated in that file.
Every candidate reads the same inputs, the cameras and the proprioceptive state of
``--features`` (never ``observation.environment_state``, the simulator's object poses), runs
with ``--threads`` torch threads, alone on the machine (each training first waits until at most
``--max-busy-cpus`` CPUs are busy; a run beside other work loses steps), and is evaluated by ``vla eval`` on
episodes ``--eval-seed`` .. + ``--episodes`` - 1.

Each (task, candidate, seed) is kept in ``--results`` (JSON) as soon as it finishes, with the
exact commands that made it, so a comparison can run across several sittings: finished
entries are skipped, a vla run killed mid-training resumes from its last checkpoint (the
budget clock resumes with it), and the table fills in. Train time is the training loop's;
start-up (dataset load, the one-off feature cache) is reported separately as process time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, RESULTS, machine, markdown_table, wait_until_idle, write_section
from vla.report import ordered_keys, wilson_interval

DEFAULT_RESULTS = REPO / "benchmarks" / "quality.json"
FEATURES = ["observation.images.agentview", "observation.images.wrist", "observation.state"]
STEP_CAP = 1_000_000  # the budget, not a step count, ends every run

# A vla candidate is one or more training stages: (recipe, share of the budget); a later stage
# starts from the previous one's weights (train.init_from).
VLA_CANDIDATES: dict[str, list[tuple[str, float]]] = {
    "dita": [("dita-cpu", 1.0)],
    "dust": [("dust-cpu", 1.0)],
    "omnijarvis": [("omnijarvis-cpu", 0.5), ("omnijarvis-cpu-vla", 0.5)],
    # the decoder is where OmniJARVIS loses on stack, not the VLA's choice of code
    # (benchmarks/omnijarvis_probe.py): three quarters of the budget to stage 1
    "omnijarvis-decoder75": [("omnijarvis-cpu", 0.75), ("omnijarvis-cpu-vla", 0.25)],
}
LEROBOT_CONFIGS = REPO / "configs" / "lerobot"
RECIPES = REPO / "configs" / "recipe"


def vla_stages(name: str) -> list[tuple[str, float]] | None:
    """A vla candidate's training stages: a named candidate above, or any other recipe of
    ``configs/recipe/`` as one stage (an ablation is a recipe that starts from another one with
    ``defaults: [dita-cpu]`` and changes one thing). None for a LeRobot candidate."""
    if name in VLA_CANDIDATES:
        return VLA_CANDIDATES[name]
    return [(name, 1.0)] if (RECIPES / f"{name}.yaml").exists() else None


def candidates() -> list[str]:
    staged = {recipe for stages in VLA_CANDIDATES.values() for recipe, _ in stages}
    recipes = [p.stem for p in sorted(RECIPES.glob("*.yaml")) if p.stem not in staged]
    return [*VLA_CANDIDATES, *recipes, *(f"lerobot-{p.stem}" for p in sorted(LEROBOT_CONFIGS.glob("*.yaml")))]


# --- running one (task, candidate, seed) -----------------------------------------------------
def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def run_logged(cmd: list[str], log: Path, threads: int) -> float:
    """Run ``cmd`` from the repository root with ``threads`` intra-op threads, output appended to
    ``log``; returns its wall seconds. A failure names the log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    print(f"  $ {shell(cmd)}", flush=True)
    started = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {shell(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"error: exit {code}; see {log}")
    return time.time() - started


def vla_train_commands(args, name: str, run_dir: Path, seed: int) -> list[tuple[list[str], Path]]:
    """(command, output dir) per stage of a vla candidate."""
    cmds, previous, stages = [], None, vla_stages(name)
    for i, (recipe, share) in enumerate(stages):
        out = run_dir / (f"stage{i + 1}" if len(stages) > 1 else "train")
        cmd = [sys.executable, "-m", "vla.cli", "train", f"recipe={recipe}", *args.env,
               f"dataset.root={args.dataset}", f"dataset.repo_id={args.repo_id}", f"output_dir={out}",
               f"seed={seed}", f"train.steps={STEP_CAP}", f"train.max_seconds={args.budget_minutes * 60 * share:g}",
               *(["train.init_from=" + str(previous)] if previous else []), *args.vla_overrides]
        cmds.append((cmd, out))
        previous = out
    return cmds


def lerobot_train_command(args, name: str, run_dir: Path, seed: int) -> tuple[list[str], Path]:
    spec = yaml.safe_load((LEROBOT_CONFIGS / f"{name.removeprefix('lerobot-')}.yaml").read_text())
    sets = [f"{k}={v!r}" for k, v in (spec.get("set") or {}).items()]
    out = run_dir / "train"
    cmd = [sys.executable, "-m", "benchmarks.lerobot_train", "--policy", spec["type"], "--dataset-root",
           str(args.dataset), "--repo-id", args.repo_id, "--output-dir", str(out), "--features", *args.features,
           "--steps", str(STEP_CAP), "--max-seconds", f"{args.budget_minutes * 60:g}", "--batch-size",
           str(spec.get("batch_size", 8)), "--seed", str(seed), "--threads", str(args.threads), "--set", *sets]
    return cmd, out


def resumable(out: Path) -> bool:
    """A vla run killed mid-training: its checkpoints are there, its summary is not."""
    return (out / "checkpoints" / "last").exists() and not (out / "summary.json").exists()


def train(args, name: str, run_dir: Path, seed: int) -> tuple[Path, list[str], dict]:
    """Train one candidate; (checkpoint to evaluate, commands, summary of the training)."""
    log = run_dir / "train.log"
    if vla_stages(name):
        stages, commands, process_s = vla_train_commands(args, name, run_dir, seed), [], 0.0
        for cmd, out in stages:
            commands.append(shell(cmd))
            if (out / "summary.json").exists():
                continue  # a finished stage of an interrupted candidate
            if resumable(out):
                cmd = [*cmd[:4], "--resume", *cmd[4:]]
            elif out.exists():
                shutil.rmtree(out)
            process_s += run_logged(cmd, log, args.threads)
        summaries = [json.loads((out / "summary.json").read_text()) for _, out in stages]
        checkpoint = stages[-1][1]
    else:
        cmd, out = lerobot_train_command(args, name, run_dir, seed)
        commands = [shell(cmd)]
        if not (out / "summary.json").exists():
            shutil.rmtree(out, ignore_errors=True)  # no resume: a killed LeRobot run starts over
            process_s = run_logged(cmd, log, args.threads)
        else:
            process_s = 0.0
        summaries = [json.loads((out / "summary.json").read_text())]
        checkpoint = out / "pretrained_model"
    summary = {
        "train_seconds": round(sum(s["train_seconds"] for s in summaries), 1),
        "process_seconds": round(process_s, 1),
        "steps": "+".join(str(s["steps"]) for s in summaries),
        "samples_seen": sum(s["samples_seen"] for s in summaries),
        "final_loss": summaries[-1]["final_loss"],
        "stopped_by": [s["stopped_by"] for s in summaries],
    }
    return checkpoint, commands, summary


def evaluate(args, checkpoint: Path, run_dir: Path) -> tuple[dict, str, float]:
    out = run_dir / "eval"
    cmd = [sys.executable, "-m", "vla.cli", "eval", *args.env, f"eval.checkpoint={checkpoint}",
           f"eval.episodes={args.episodes}", f"eval.seed={args.eval_seed}", f"eval.n_envs={args.eval_envs}",
           f"eval.output_dir={out}", f"output_dir={run_dir}"]
    seconds = run_logged(cmd, run_dir / "eval.log", args.threads)
    return json.loads((out / "report.json").read_text()), shell(cmd), seconds


def run_one(args, name: str, seed: int) -> None:
    key = f"{args.task}/{name}/seed{seed}"
    results = load_results(args.results)
    if key in results["runs"]:
        print(f"[{key}] done before: {results['runs'][key]['success_rate']:.0%}", flush=True)
        return
    run_dir = Path(args.out) / args.task / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    busy_before = wait_until_idle(args.max_busy_cpus, args.idle_wait_minutes * 60, f"[{key}]")
    print(f"[{key}] training for {args.budget_minutes:g} min", flush=True)
    load_before = os.getloadavg()[0]
    checkpoint, commands, summary = train(args, name, run_dir, seed)
    print(f"[{key}] evaluating {args.episodes} episodes", flush=True)
    report, eval_cmd, eval_s = evaluate(args, checkpoint, run_dir)
    record = {
        "task": args.task, "candidate": name, "seed": seed, "dataset": str(args.dataset), "env": args.env,
        "budget_minutes": args.budget_minutes, "threads": args.threads, "features": args.features,
        "vla_overrides": list(args.vla_overrides) if vla_stages(name) else [],  # LeRobot's trainings get none
        "episodes": report["episodes"], "successes": report["successes"], "success_rate": report["success_rate"],
        "ci95": report["ci95"], "mean_length": report["mean_length"],
        **({"stages_reached": report["stages_reached"]} if "stages_reached" in report else {}),
        **summary, "eval_seconds": round(eval_s, 1),
        "reproduce": reproduce_command(args, name, seed), "commands": [*commands, eval_cmd], "machine": machine(),
        "load_avg_before": round(load_before, 2), "busy_cpus_before": round(busy_before, 2), "run_dir": str(run_dir),
    }
    results = record_run(args.results, key, record)
    write_table(results, args.markdown)  # the table fills in run by run
    r = results["runs"][key]
    print(f"[{key}] reproduce with: {r['reproduce']}", flush=True)
    print(f"[{key}] success {r['success_rate']:.0%} ({r['successes']}/{r['episodes']}), {r['steps']} steps in "
          f"{r['train_seconds']:.0f} s, final loss {r['final_loss']:.4g}", flush=True)


def reproduce_command(args, name: str, seed: int) -> str:
    """The one command that redoes this (task, candidate, seed) from scratch (with a fresh --results)."""
    cmd = ["python", "-m", "benchmarks.quality", "--task", args.task, "--dataset", str(args.dataset), "--repo-id",
           args.repo_id, "--env", *args.env, "--candidates", name, "--seeds", str(seed), "--budget-minutes",
           f"{args.budget_minutes:g}", "--episodes", str(args.episodes), "--eval-seed", str(args.eval_seed),
           "--eval-envs", str(args.eval_envs), "--threads", str(args.threads), "--features", *args.features]
    if args.vla_overrides:
        cmd += ["--vla-overrides", *args.vla_overrides]
    return shell(cmd)


# --- results and the table ---------------------------------------------------------------------
def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def record_run(path: Path, key: str, record: dict) -> dict:
    """Add one run to the results file as it is on disk now (another sitting, or an edit, may
    have changed it since this one started) and return the merged results."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:  # two sittings finishing at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        results["runs"][key] = record
        save_results(path, results)
    return results


def save_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def table(results: dict) -> str:
    """One markdown table per task: a row per candidate, its seeds pooled."""
    by_task: dict[str, dict[str, list[dict]]] = {}
    for r in results["runs"].values():
        by_task.setdefault(r["task"], {}).setdefault(r["candidate"], []).append(r)
    order = {n: i for i, n in enumerate(candidates())}
    parts = []
    for task, rows in sorted(by_task.items()):
        lines = []
        for name, runs in sorted(rows.items(), key=lambda kv: order.get(kv[0], 99)):
            runs.sort(key=lambda r: r["seed"])
            s, n = sum(r["successes"] for r in runs), sum(r["episodes"] for r in runs)
            lo, hi = wilson_interval(s, n)
            def mean(k: str, runs: list[dict] = runs) -> float:  # used in this iteration only; the default binds it
                return sum(float(r[k]) for r in runs) / len(runs)
            lines.append([
                " ".join([name, *(f"`{o}`" for o in runs[0].get("vla_overrides", []))]), str(len(runs)),
                " / ".join(f"{r['success_rate']:.0%}" for r in runs),
                f"**{s / n:.0%}** [{lo:.0%}, {hi:.0%}]", f"{mean('budget_minutes'):g}", f"{mean('train_seconds'):.0f}",
                " / ".join(str(r["steps"]) for r in runs), f"{mean('samples_seen'):,.0f}",
                f"{mean('final_loss'):.3g}", stages_cell(runs),
            ])
        budgets = sorted({r["budget_minutes"] for runs in rows.values() for r in runs})
        first = next(iter(rows.values()))[0]
        parts.append(
            f"### {task}\n\nData: `{first['dataset']}`; env: `{' '.join(first['env'])}`; inputs: "
            f"{', '.join(f'`{f}`' for f in first['features'])}; {first['episodes']} evaluation episodes per seed; "
            f"budget {', '.join(f'{b:g}' for b in budgets)} min of training per run, "
            f"{first['threads']} torch threads.\n\n"
            + markdown_table(["candidate", "seeds", "success per seed", "pooled success [95% Wilson CI]",
                              "budget min", "train s (mean)", "steps per seed", "samples seen (mean)",
                              "final loss (mean)", "stages reached (pooled)"], lines))
    return "\n\n".join(parts)


def stages_cell(runs: list[dict]) -> str:
    """The share of episodes that reached each stage of the task, over the runs that report it."""
    staged = [r for r in runs if r.get("stages_reached")]
    if not staged:
        return "-"
    n = sum(r["episodes"] for r in staged)
    names = ordered_keys(r["stages_reached"] for r in staged)
    return ", ".join(f"{k} {sum(r['stages_reached'].get(k, 0) * r['episodes'] for r in staged) / n:.0%}"
                     for k in names if k != "success")


def write_table(results: dict, path: Path = RESULTS) -> None:
    intro = ("## Learning quality side by side (`python -m benchmarks.quality`)\n\n"
             "Each candidate trains alone on the machine for the same wall-clock budget, on the same data "
             "and inputs, and is evaluated by `vla eval` on the same seeds. Every run's exact commands, its "
             "machine and load are in `benchmarks/quality.json`. Losses are each candidate's own objective "
             "(not comparable across candidates). LeRobot candidates: `configs/lerobot/*.yaml` say what was "
             "changed from LeRobot's defaults and why.\n\n")
    write_section("quality", intro + (table(results) or "No runs yet."), path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", help="the label of this comparison's rows (e.g. lift)")
    ap.add_argument("--dataset", type=Path, help="a LeRobot v3.0 dataset root")
    ap.add_argument("--repo-id", default=None, help="its repo id (default: local/<task>)")
    ap.add_argument("--env", nargs="*", default=[], help="vla overrides choosing the eval env, e.g. env=lift")
    ap.add_argument("--candidates", nargs="+", default=candidates(), choices=candidates())
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--eval-seed", type=int, default=100_000)
    ap.add_argument("--eval-envs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-busy-cpus", type=float, default=0.5,
                    help="wait before each training until three readings in a row, 10 s apart, find at most this many "
                         "CPUs busy (inf: never wait)")
    ap.add_argument("--idle-wait-minutes", type=float, default=30.0,
                    help="how long to wait for that before the run fails")
    ap.add_argument("--features", nargs="+", default=FEATURES, help="the inputs every candidate reads")
    ap.add_argument("--vla-overrides", nargs="*", default=[], help="extra overrides for every vla training stage")
    ap.add_argument("--out", default=str(REPO / "outputs" / "quality"))
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--markdown", type=Path, default=RESULTS, help="the file the table is written into")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from --results")
    args = ap.parse_args(argv)
    if not args.table:
        if not (args.task and args.dataset):
            ap.error("--task and --dataset are required to run (or pass --table)")
        if not (args.dataset / "meta" / "info.json").exists():
            ap.error(f"--dataset {args.dataset}: not a LeRobot dataset (no meta/info.json)")
        args.repo_id = args.repo_id or f"local/{args.task}"
        failed = []
        for seed in args.seeds:  # seed-major: a sitting that ends early leaves every candidate comparable
            for name in args.candidates:
                try:
                    run_one(args, name, seed)
                except SystemExit as e:  # one failed run (its log is named) must not stop the sitting
                    print(f"[{args.task}/{name}/seed{seed}] {e}", flush=True)
                    failed.append(f"{name}/seed{seed}")
    write_table(load_results(args.results), args.markdown)
    if not args.table and failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
