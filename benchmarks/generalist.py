"""One generalist against a specialist per task family, at the same total training steps.

    python -m benchmarks.generalist                       # everything the plan lists, seed 0
    python -m benchmarks.generalist --stage collect       # only the datasets (the experts' demos)
    python -m benchmarks.generalist --models tabletop --seeds 0 1 2
    python -m benchmarks.generalist --table               # rewrite the RESULTS.md table only

The plan (``benchmarks/generalist.yaml``) lists task families, each a list of entries: a
dataset (collected by ``vla collect`` with the entry's env and collect overrides when missing),
its eval env, and its feature mapping. Models:
- a specialist per family, trained with ``dataset.mixture`` = that family's entries for
  ``steps_per_family`` steps;
- the generalist, trained on every entry for ``steps_per_family x families`` steps,
so both see the same number of samples in total (the same recipe, batch and schedule).
Every model is evaluated by ``vla eval`` on each of its entries' envs as that entry's
embodiment (``eval.embodiment``), on the same seeds; a Meta-World set reports per task too.

Each (model, seed) training and each (model, entry, seed) evaluation is kept in ``--results``
as soon as it finishes, so the comparison runs across sittings: finished pieces are skipped and
a killed training resumes from its last checkpoint. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from benchmarks.common import REPO, RESULTS, machine, markdown_table, write_section
from benchmarks.quality import load_results, record_run, resumable, run_logged, shell
from vla.report import wilson_interval

PLAN = REPO / "benchmarks" / "generalist.yaml"
DEFAULT_RESULTS = REPO / "benchmarks" / "generalist.json"
GENERALIST = "generalist"


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(path.read_text())
    names = [e["name"] for entries in plan["families"].values() for e in entries]
    if len(set(names)) != len(names) or GENERALIST in plan["families"]:
        raise SystemExit(f"{path}: entry names must be unique and no family may be called {GENERALIST!r}")
    return plan


def entries_of(plan: dict, model: str) -> list[dict]:
    """The entries a model trains on and is evaluated on: its family's, or all of them."""
    if model == GENERALIST:
        return [e for entries in plan["families"].values() for e in entries]
    return plan["families"][model]


def dataset_root(plan: dict, entry: dict) -> Path:
    return REPO / plan["data_root"] / entry["name"]


def collect(plan: dict, entry: dict, threads: int) -> None:
    """The entry's dataset, topped up to its episode count: a collection cut short (the end of a
    sitting) keeps the episodes it saved, and the next one appends the rest from other seeds."""
    root = dataset_root(plan, entry)
    info = root / "meta" / "info.json"
    have = json.loads(info.read_text())["total_episodes"] if info.exists() else 0
    if have >= entry["episodes"]:
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vla.cli", "collect", f"recipe={plan['recipe']}", *entry["env"],
           *entry.get("collect", []), f"collect.episodes={entry['episodes'] - have}", f"dataset.root={root}",
           f"dataset.repo_id=local/{entry['name']}", f"collect.seed={1_000_000 * (have > 0) + 10_000 * have}"]
    print(f"[collect {entry['name']}] {entry['episodes'] - have} episodes", flush=True)
    run_logged(cmd, root.parent / f"{entry['name']}.collect.log", threads)


def mixture_override(plan: dict, entries: list[dict]) -> str:
    """``dataset.mixture=[...]`` for the entries, in Hydra's override syntax."""
    spec = [{"name": e["name"], "root": str(dataset_root(plan, e)), **({"features": e["features"]}
                                                                      if e.get("features") else {})}
            for e in entries]
    return "dataset.mixture=" + hydra_value(spec)


def hydra_value(value) -> str:
    """A value as a Hydra override writes it: bare keys, quoted strings, null."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def run_dir(args, model: str, seed: int) -> Path:
    return Path(args.out) / model / f"seed{seed}"


def train(args, plan: dict, model: str, seed: int) -> None:
    key = f"train/{model}/seed{seed}"
    if key in load_results(args.results)["runs"]:
        return
    entries, out = entries_of(plan, model), run_dir(args, model, seed) / "train"
    steps = plan["steps_per_family"] * (len(plan["families"]) if model == GENERALIST else 1)
    cmd = [sys.executable, "-m", "vla.cli", "train", f"recipe={plan['recipe']}", mixture_override(plan, entries),
           f"output_dir={out}", f"seed={seed}", f"train.steps={steps}", "train.max_seconds=null",
           *plan.get("overrides", [])]
    print(f"[{key}] {steps} steps on {', '.join(e['name'] for e in entries)}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "summary.json").exists():  # else it finished, and only its record is missing
        if not resumable(out):
            shutil.rmtree(out, ignore_errors=True)  # killed before its first checkpoint
        run_logged([*cmd[:4], "--resume", *cmd[4:]] if resumable(out) else cmd, out.parent / "train.log",
                   args.threads)
    summary = json.loads((out / "summary.json").read_text())
    record_run(args.results, key, {"model": model, "seed": seed, "steps": summary["steps"],
                                   "train_seconds": summary["train_seconds"], "final_loss": summary["final_loss"],
                                   "command": shell(cmd), "machine": machine()})


def evaluate(args, plan: dict, model: str, entry: dict, seed: int) -> None:
    key = f"eval/{model}/{entry['name']}/seed{seed}"
    if key in load_results(args.results)["runs"]:
        return
    base = run_dir(args, model, seed)
    out = base / "eval" / entry["name"]
    cmd = [sys.executable, "-m", "vla.cli", "eval", *entry["env"], f"eval.checkpoint={base / 'train'}",
           f"eval.embodiment={entry['name']}", f"eval.episodes={args.episodes or plan['episodes']}",
           f"eval.seed={plan['eval_seed']}", f"eval.n_envs={args.eval_envs}", f"eval.output_dir={out}",
           f"output_dir={base}"]
    print(f"[{key}]", flush=True)
    run_logged(cmd, base / "eval.log", args.threads)
    report = json.loads((out / "report.json").read_text())
    per_task = {t: {"successes": round(r["success_rate"] * r["episodes"]), "episodes": r["episodes"]}
                for t, r in report.get("per_task", {}).items()}
    record_run(args.results, key, {"model": model, "entry": entry["name"], "seed": seed,
                                   "successes": report["successes"], "episodes": report["episodes"],
                                   "per_task": per_task, "command": shell(cmd)})


# --- the table ---------------------------------------------------------------------------------
def table(plan: dict, results: dict) -> str:
    """A row per entry: each specialist's and the generalist's pooled success, and the
    difference; a row per family with the mean over its entries."""
    evals: dict[tuple[str, str], list[dict]] = {}
    for key, r in results["runs"].items():
        if key.startswith("eval/"):
            evals.setdefault((r["model"], r["entry"]), []).append(r)

    def rate(model: str, entry: str) -> tuple[float, str] | None:
        runs = evals.get((model, entry))
        if not runs:
            return None
        s, n = sum(r["successes"] for r in runs), sum(r["episodes"] for r in runs)
        lo, hi = wilson_interval(s, n)
        return s / n, f"{s / n:.0%} [{lo:.0%}, {hi:.0%}] ({len(runs)} seed{'s' * (len(runs) > 1)})"

    rows = []
    for family, entries in plan["families"].items():
        diffs = []
        for e in entries:
            spec, gen = rate(family, e["name"]), rate(GENERALIST, e["name"])
            diff = f"{(gen[0] - spec[0]) * 100:+.0f}" if spec and gen else "-"
            if spec and gen:
                diffs.append(gen[0] - spec[0])
            rows.append([family, e["name"], spec[1] if spec else "-", gen[1] if gen else "-", diff])
        if len(diffs) == len(entries):
            rows.append([f"**{family}**", "mean", "", "", f"**{sum(diffs) / len(diffs) * 100:+.0f}**"])
    trains = [r for k, r in results["runs"].items() if k.startswith("train/")]
    steps = ", ".join(f"{r['model']} seed {r['seed']}: {r['steps']} steps in {r['train_seconds'] / 60:.0f} min"
                      for r in sorted(trains, key=lambda r: (r["model"], r["seed"])))
    return (markdown_table(["family", "task", "specialist [95% CI]", "generalist [95% CI]",
                            "generalist - specialist (points)"], rows) + f"\n\nTraining: {steps or 'none yet'}.")


def write_table(plan: dict, results: dict, path: Path = RESULTS) -> None:
    intro = ("## One generalist against a specialist per family (`python -m benchmarks.generalist`)\n\n"
             f"Recipe `{plan['recipe']}`; each specialist trains {plan['steps_per_family']:,} steps on its family's "
             f"datasets, the generalist {plan['steps_per_family'] * len(plan['families']):,} on all of them "
             "(a mixture, one embodiment per dataset); every model is evaluated on each of its datasets' envs "
             f"on seeds {plan['eval_seed']}.. (`benchmarks/generalist.yaml`, commands in "
             "`benchmarks/generalist.json`).\n\n")
    write_section("generalist", intro + table(plan, results), path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", type=Path, default=PLAN)
    ap.add_argument("--stage", choices=["collect", "train", "eval", "all"], default="all")
    ap.add_argument("--models", nargs="+", default=None, help="families and/or 'generalist' (default: all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--episodes", type=int, default=None, help="evaluation episodes per entry (default: the plan's)")
    ap.add_argument("--eval-envs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "outputs" / "generalist"))
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--markdown", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="only rewrite the table from --results")
    args = ap.parse_args(argv)
    plan = load_plan(args.plan)
    models = args.models or [*plan["families"], GENERALIST]
    unknown = set(models) - {*plan["families"], GENERALIST}
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; the plan has {[*plan['families'], GENERALIST]}")
    if not args.table:
        needed = {e["name"]: e for m in models for e in entries_of(plan, m)}
        if args.stage in ("collect", "all"):
            for entry in needed.values():
                collect(plan, entry, args.threads)
        for seed in args.seeds:
            for model in models:
                if args.stage in ("train", "all"):
                    train(args, plan, model, seed)
                if args.stage in ("eval", "all"):
                    for entry in entries_of(plan, model):
                        evaluate(args, plan, model, entry, seed)
                write_table(plan, load_results(args.results), args.markdown)
    write_table(plan, load_results(args.results), args.markdown)


if __name__ == "__main__":
    main()
