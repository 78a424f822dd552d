"""Summaries people read: success rates with confidence intervals, reports, training curves."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (well behaved at 0% and 100%)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_comparison(a: dict, b: dict) -> dict:
    """Two evaluation reports (``report.json`` contents) compared episode by episode on the
    seeds both ran: where one checkpoint is evaluated two ways (a knob at inference), the
    episodes are paired and most of the 50-episode noise cancels. ``p_value`` is the exact
    two-sided McNemar test (a binomial test on the episodes that only one side won)."""
    won_a = {r["seed"]: bool(r["success"]) for r in a["episodes_detail"]}
    won_b = {r["seed"]: bool(r["success"]) for r in b["episodes_detail"]}
    seeds = sorted(set(won_a) & set(won_b))
    if not seeds:
        raise ValueError("the two reports share no episode seed: they are not paired")
    only_a = sum(won_a[s] and not won_b[s] for s in seeds)
    only_b = sum(won_b[s] and not won_a[s] for s in seeds)
    from scipy.stats import binomtest

    p_value = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0  # no discordant pair: no evidence
    return {"episodes": len(seeds), "success_a": sum(won_a[s] for s in seeds) / len(seeds),
            "success_b": sum(won_b[s] for s in seeds) / len(seeds), "only_a": only_a, "only_b": only_b,
            "p_value": p_value}


def _rates(records: list[dict]) -> dict:
    n, s = len(records), sum(r["success"] for r in records)
    lo, hi = wilson_interval(s, n)
    out = {"episodes": n, "successes": s, "success_rate": s / n if n else 0.0, "ci95": [lo, hi],
           "mean_length": float(np.mean([r["length"] for r in records])) if records else 0.0}
    stages = ordered_keys(r.get("stages", {}) for r in records)
    if stages:  # envs that report info["stages"]: the share of episodes that ever reached each one
        out["stages_reached"] = {k: float(np.mean([r.get("stages", {}).get(k, False) for r in records]))
                                 for k in stages}
    return out


def ordered_keys(mappings) -> list[str]:
    """Every key of the mappings, once, in the order they first appear (the env's stage order)."""
    return list(dict.fromkeys(k for m in mappings for k in m))


def summarize(records: list[dict], protocol: dict) -> dict:
    by_task = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    return {**_rates(records), "per_task": {t: _rates(rs) for t, rs in sorted(by_task.items())},
            "protocol": protocol, "episodes_detail": records}


def write_report(out_dir: Path, result: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    lo, hi = result["ci95"]
    lines = [
        "# Evaluation report", "",
        f"**Success rate: {result['success_rate']:.1%}** ({result['successes']}/{result['episodes']}), "
        f"95% CI [{lo:.1%}, {hi:.1%}] (Wilson); mean episode length {result['mean_length']:.1f} steps.", "",
        "| task | episodes | success | 95% CI | mean length |", "|---|---|---|---|---|",
    ]
    for task, r in result["per_task"].items():
        lines.append(f"| {task} | {r['episodes']} | {r['success_rate']:.1%} | "
                     f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | {r['mean_length']:.1f} |")
    staged = {t: r["stages_reached"] for t, r in result["per_task"].items() if "stages_reached" in r}
    if staged:
        names = ordered_keys(staged.values())
        names.sort(key=lambda k: k == "success")  # stable: the envs' order, success last
        lines += ["", "## Stages reached", "",
                  "Where episodes end: the share that ever reached each stage of the task.", "",
                  "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {t} | " + " | ".join(f"{reached[k]:.0%}" if k in reached else "-" for k in names) + " |"
                  for t, reached in staged.items()]
    lines += ["", "## Protocol", ""] + [f"- {k}: {v}" for k, v in result["protocol"].items()]
    videos = sorted((out_dir / "videos").glob("*.mp4")) if (out_dir / "videos").exists() else []
    if videos:
        lines += ["", "## Videos", ""] + [f"- [{v.name}](videos/{v.name})" for v in videos]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def plot_training_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss (log scale) and learning rate against step, from the run's metrics.csv; a mixture's
    per-entry losses (``loss/<name>`` columns) beside the total."""
    if not Path(metrics_csv).exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [float(r["loss"]) for r in rows], label="loss")
    for column in sorted(k for k in rows[0] if k.startswith("loss/")) if rows else []:
        ax1.plot(steps, [float(r[column]) for r in rows], label=column.removeprefix("loss/"), alpha=0.7)
        ax1.legend(fontsize=8)
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax2.plot(steps, [float(r["lr"]) for r in rows])
    ax2.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
