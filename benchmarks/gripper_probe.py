"""When does a policy close and open the gripper? An offline probe on its own training data.

    R=outputs/quality/stack-align200
    python -m benchmarks.gripper_probe --dataset outputs/quality/data/stack-align200 --repo-id local/stack-align \\
        --checkpoints $R/dita/seed0/train $R/dust-prefix-cpu/seed0/train

A stack episode fails at the release when the policy carries the cube over the target and never
lets go, and the stage counters cannot say whether that is the arm's motion or the gripper's
timing. This probe looks at the gripper alone. For each checkpoint it samples one chunk for
each of ``batches x batch_size`` training windows (a fixed sampler seed and fixed noise: the
same windows and noise for every checkpoint of one policy kind), and compares the sign of the
gripper action over the executed steps (``n_action_steps``) with the demonstration's: the
Panda's gripper in robosuite reads only the sign (positive closes). Windows are split by what
the demonstration does in them: ``steady`` (no change), ``grasp`` (it closes) and ``release``
(it opens). Reported per kind: how many windows, the fraction of executed steps whose sign
agrees, and for grasp and release windows how often the sampled chunk switches at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.committed_probe import add_probe_arguments, probe_data
from benchmarks.common import REPO, markdown_table

KINDS = ("steady", "grasp", "release")


def window_kind(truth_sign: torch.Tensor) -> str:
    """What the demonstration's gripper does over one window's executed steps (signs, (n,))."""
    if truth_sign[0] < 0 and (truth_sign > 0).any():
        return "grasp"
    if truth_sign[0] > 0 and (truth_sign < 0).any():
        return "release"
    return "steady"


def switches(pred_sign: torch.Tensor, kind: str) -> bool:
    """Whether the sampled chunk's gripper makes the window's change at all (grasp: closes somewhere)."""
    return bool((pred_sign > 0).any()) if kind == "grasp" else bool((pred_sign < 0).any())


def tally(truth: torch.Tensor, pred: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """Per kind, each window's sign agreement and (grasp / release) whether the chunk switches.
    truth, pred: (B, n) unnormalized gripper actions over the executed steps."""
    out = {k: {"agree": [], "switch": []} for k in KINDS}
    for t, p in zip(torch.sign(truth), torch.sign(pred)):
        kind = window_kind(t)
        out[kind]["agree"].append((t == p).float().mean().item())
        if kind != "steady":
            out[kind]["switch"].append(float(switches(p, kind)))
    return out


def probe(checkpoint: str, dataset: str, repo_id: str, batches: int, batch_size: int, gripper_dim: int) -> dict:
    from vla.features import ACTION

    policy, normalizer, data = probe_data(checkpoint, dataset, repo_id, batches, batch_size)
    executed = slice(0, policy.config.n_action_steps)
    truths, preds = [], []
    for i, batch in enumerate(data):
        obs = {k: v for k, v in batch.items() if not k.startswith(ACTION)}
        noise = torch.randn(batch[ACTION].shape, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            pred = policy.sample_actions(obs, noise=noise)
        truths.append(normalizer.unnormalize(ACTION, batch[ACTION])[:, executed, gripper_dim])
        preds.append(normalizer.unnormalize(ACTION, pred)[:, executed, gripper_dim])
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    return {kind: {"windows": len(w["agree"]), "sign_agreement": mean(w["agree"]), "switches": mean(w["switch"])}
            for kind, w in tally(torch.cat(truths), torch.cat(preds)).items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(ap)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--gripper-dim", type=int, default=-1, help="the action dimension that drives the gripper")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "gripper_probe.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for ckpt in args.checkpoints:
        results[str(ckpt)] = {"dataset": str(args.dataset), "samples": args.batches * args.batch_size,
                              **probe(str(ckpt), args.dataset, args.repo_id, args.batches, args.batch_size,
                                      args.gripper_dim)}
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    fmt = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    rows = [[c, *(f"{results[str(c)][k]['windows']}: {fmt(results[str(c)][k]['sign_agreement'])}" for k in KINDS),
             fmt(results[str(c)]["grasp"]["switches"]), fmt(results[str(c)]["release"]["switches"])]
            for c in args.checkpoints]
    print(markdown_table(["checkpoint", *(f"{k}: windows, sign agreement" for k in KINDS),
                          "grasp windows where it closes", "release windows where it opens"], rows))


if __name__ == "__main__":
    main()
