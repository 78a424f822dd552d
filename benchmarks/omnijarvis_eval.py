"""OmniJARVIS on our tasks: behavior-tokenizer quality per codebook size, and success of the
VLA with thoughts, without thoughts, and Dita, on the same data.

Per task:
1. stage 1 (tokenizer + decoder) for each codebook in ``CODEBOOKS``, same budget;
2. tokenizer quality of each: codebook usage over every window of the dataset (fraction of
   codes used, perplexity) and reconstruction, the normalized action MSE of the chunk the
   decoder produces from a window's own code, against the same with another window's code
   (how much the decoder relies on the code at all);
3. stage 2 (the VLA) with and without thoughts from the default codebook's stage-1 run;
4. ``vla eval`` of both on the same 50 held-out seeds as every other row in RESULTS.md.

Dita's row is the DUST ablation's (``outputs/evidence/<task>/dita``: same data, same seeds). The lift
data is the demo's (``outputs/demo/data``, which ``make demo`` rebuilds), stack's the ablation's.
Finished steps are skipped, so a killed run continues where it stopped.

    python -m benchmarks.omnijarvis_eval --tasks lift stack --jobs 2
    python -m benchmarks.omnijarvis_eval --report-only
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, cell, machine, markdown_table, run_vla, train_seconds, write_section

CODEBOOKS = {"e14": [8, 8, 8, 6, 5], "e8": [8, 6, 5]}  # the paper's chosen codebook and its smallest
DATA = {"lift": REPO / "outputs" / "demo" / "data", "stack": REPO / "outputs" / "evidence" / "stack" / "data"}
STAGE1 = ["policy=omnijarvis-small", "train.batch_size=16", "policy.decoder_samples=4", "train.lr=1e-3",
          "train.warmup_steps=200", "train.save_every=1000"]
STAGE2 = ["train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=200", "train.save_every=1000"]
VLA_ROWS = {"OmniJARVIS, with thoughts": "vla_thoughts", "OmniJARVIS, without thoughts": "vla_nothoughts"}


def done(run: Path) -> int:
    last = run / "checkpoints" / "last"
    return int(last.resolve().name) if last.exists() else 0


def train(task: str, out: Path, overrides: list[str], steps: int, threads: int | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    have = done(out)
    if have >= steps:
        return
    print(f"[{task}] training {out.name}" + (f" from step {have}" if have else ""), flush=True)
    run_vla("train", *(["--resume"] if have else []), f"env={task}", f"dataset.root={DATA[task]}",
            f"dataset.repo_id=local/{task}", f"output_dir={out}", f"train.steps={steps}", *overrides,
            log=out.parent / f"{out.name}.train.log", threads=threads)


def evaluate(task: str, run: Path, episodes: int, threads: int | None) -> None:
    if (run.parent / f"{run.name}_eval" / "report.json").exists():
        return
    print(f"[{task}] evaluating {run.name}", flush=True)
    run_vla("eval", f"env={task}", f"output_dir={run}", f"eval.output_dir={run.parent / f'{run.name}_eval'}",
            f"eval.episodes={episodes}", log=run.parent / f"{run.name}.eval.log", threads=threads)


def tokenizer_quality(task: str, run: Path, windows: int = 512, seed: int = 0) -> dict:
    """Codebook usage over every window start of the dataset; reconstruction MSE on ``windows``."""
    import torch

    from vla.checkpoint import load_policy
    from vla.config import DatasetConfig
    from vla.data.pipeline import TrainingData
    from vla.data.normalize import normalize_batch

    out = run.parent / f"{run.name}_quality.json"
    if out.exists():
        return json.loads(out.read_text())
    policy, _ = load_policy(str(run), "cpu")
    data = TrainingData(DatasetConfig(root=str(DATA[task]), repo_id=f"local/{task}"), policy.config, seed=seed,
                        device=torch.device("cpu"), num_workers=0, batch_size=64, progress=False)
    sampler, norm = data._sampler, data.normalizer
    fsq = policy.behavior_tokenizer.fsq
    counts = torch.zeros(fsq.codebook_size)
    for start in range(0, len(sampler), 128):
        batch = normalize_batch(sampler.get(torch.arange(start, min(start + 128, len(sampler)))), norm)
        counts += torch.bincount(policy.encode_behavior(batch).flatten(), minlength=fsq.codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(sampler), (windows,), generator=g)
    batch = normalize_batch(sampler.get(idx), norm)
    j = torch.zeros(windows, dtype=torch.long)
    noise = torch.randn(windows, policy.config.horizon, policy.config.action_dim, generator=g)
    torch.manual_seed(seed)
    pred, target, pad = policy.reconstruct(batch, j, noise)
    own = mse(pred, target, pad)
    # the same chunks decoded with the codes of other windows (a fixed permutation)
    perm = torch.randperm(windows, generator=g)
    codes = policy.behavior_tokenizer.fsq.indices_to_codes(policy.encode_behavior(batch)[perm])
    frames, text, state, _ = policy._window(batch)
    shuffled = policy.decoder.sample(policy._history_prefix(frames, text, state, j), codes, j, noise)
    result = {"codebook": fsq.codebook_size, "used": int((counts > 0).sum()), "windows": int(counts.sum()),
              "usage": float((counts > 0).float().mean()), "perplexity": math.exp(entropy),
              "mse_own_code": own, "mse_other_code": mse(shuffled, target, pad)}
    out.write_text(json.dumps(result, indent=1))
    return result


def mse(pred, target, pad) -> float:
    valid = (~pad).float()
    return float(((pred - target).pow(2).mean(-1) * valid).sum() / valid.sum())


def run_task(task: str, out: Path, args) -> None:
    threads = 1 if args.jobs > 1 else None
    names = list(CODEBOOKS) if task in args.codebooks_on else ["e14"]
    stage1 = {name: out / f"stage1_{name}" for name in names}
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(train, task, run, [*STAGE1, f"policy.fsq_levels=[{','.join(map(str, CODEBOOKS[n]))}]"],
                            args.stage1_steps, threads) for n, run in stage1.items()]
        [j.result() for j in jobs]
    for run in stage1.values():
        tokenizer_quality(task, run)

    def vla_row(slug: str, thoughts: bool) -> None:
        run = out / slug
        train(task, run, [*STAGE1[:1], "policy.stage=vla", f"policy.thoughts={str(thoughts).lower()}",
                          f"train.init_from={stage1['e14']}", *STAGE2], args.stage2_steps, threads)
        evaluate(task, run, args.episodes, threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(vla_row, slug, slug == "vla_thoughts") for slug in VLA_ROWS.values()]
        [j.result() for j in jobs]


def report(tasks: list[str], out: Path) -> str:
    header = ["policy", *[f"{t}: success [95% CI]" for t in tasks], "stage-2 s / steps (first task)"]
    rows = []
    for row, slug in VLA_ROWS.items():
        run = out / tasks[0] / "omnijarvis" / slug
        budget = "not run"
        if (run / "metrics.csv").exists():
            secs, steps = train_seconds(run)
            budget = f"{secs:.0f} s / {steps}"
        rows.append([row, *[cell(out / t / "omnijarvis" / f"{slug}_eval" / "report.json") for t in tasks], budget])
    rows.append(["Dita (the DUST ablation's row)",
                 *[cell(out / t / "dita" / "eval" / "report.json") for t in tasks], "-"])
    quality = []
    for t in tasks:
        for name, levels in CODEBOOKS.items():
            f = out / t / "omnijarvis" / f"stage1_{name}_quality.json"
            if f.exists():
                q = json.loads(f.read_text())
                quality.append([t, f"{name} {levels}", f"{q['codebook']:,}", f"{q['used']} ({q['usage']:.2%})",
                                f"{q['perplexity']:.1f}", f"{q['mse_own_code']:.4f}", f"{q['mse_other_code']:.4f}"])
    return (f"## OmniJARVIS behavior tokens on the tabletop tasks\n\n{machine()}. "
            "`python -m benchmarks.omnijarvis_eval`. "
            "Same demos and the same 50 held-out seeds as the DUST ablation. Stage 1: "
            f"`{' '.join(STAGE1)}`; stage 2: `{' '.join(STAGE2)}` from the e14 stage-1 run.\n\n"
            + markdown_table(header, rows)
            + "\n\nBehavior tokenizer per codebook (usage over every window start of the dataset; "
            "reconstruction: normalized action MSE of the decoded 16-step chunk at the window's first "
            "step, with the window's own code and with another window's code):\n\n"
            + markdown_table(["task", "codebook", "size", "codes used", "perplexity", "MSE own code",
                              "MSE other code"], quality) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["lift", "stack"])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "evidence")
    ap.add_argument("--stage1-steps", type=int, default=4000)
    ap.add_argument("--stage2-steps", type=int, default=3000)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--codebooks-on", nargs="*", default=["lift"], help="tasks that train every codebook (others: e14)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with one thread when > 1)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        for task in args.tasks:
            run_task(task, args.out / task / "omnijarvis", args)
    tasks = [t for t in ("lift", "stack") if (args.out / t / "omnijarvis").is_dir()] or args.tasks
    text = report(tasks, args.out)
    print(text)
    write_section("omnijarvis", text)


if __name__ == "__main__":
    main()
