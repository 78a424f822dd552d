"""Does a policy trained with committed actions (training-time RTC) still predict, and still look?

    PYTHONPATH=. python -m benchmarks.committed_probe --dataset outputs/quality/data/stack-align \
        --repo-id local/stack-align --checkpoints <run without> <run with policy.rtc_train_max_delay>

Offline, on the training data's own chunks (normalized actions, the same samples and noise for
every checkpoint): the error of the actions a ``--delay``-step inference delay executes (chunk
positions d .. d + n_action_steps - 1), sampled
- ``d0``: as usual, nothing committed;
- ``committed``: with the first d ground-truth actions committed (``deploy.rtc_method=condition``),
  for checkpoints trained with them;
- ``..._other_obs``: the same with each sample's observation swapped for another sample's: how
  much the prediction rests on what the policy sees rather than on the committed actions.
Results go to ``benchmarks/committed_probe.json`` (per checkpoint) and print as a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import REPO, markdown_table


def _other_observation(obs: dict) -> dict:
    """Each sample with the next sample's observation (frames, text, state, task)."""
    def roll(v):
        if isinstance(v, dict):
            return {k: roll(x) for k, x in v.items()}
        return v.roll(1, 0) if torch.is_tensor(v) else v[-1:] + v[:-1]
    return {k: roll(v) for k, v in obs.items()}


def probe_data(checkpoint: str, dataset: str, repo_id: str, batches: int, batch_size: int):
    """A checkpoint's policy (eval mode), its normalizer and ``batches`` normalized batches of its
    training data, the same samples for every checkpoint of one policy kind (a fixed sampler seed)."""
    from vla.checkpoint import load_policy
    from vla.config import DatasetConfig
    from vla.data.normalize import normalize_batch
    from vla.data.pipeline import TrainingData

    policy, normalizer = load_policy(checkpoint)
    policy.eval()
    data = TrainingData(DatasetConfig(root=dataset, repo_id=repo_id), policy.config, seed=123,
                        device=torch.device("cpu"), num_workers=0, batch_size=batch_size, progress=False)
    return policy, normalizer, (normalize_batch(data.next_batch(), normalizer) for _ in range(batches))


def add_probe_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dataset", required=True, help="the LeRobot v3.0 root the checkpoints were trained on")
    ap.add_argument("--repo-id", default="local/data")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)


def probe(checkpoint: str, dataset: str, repo_id: str, delay: int, batches: int, batch_size: int) -> dict:
    from vla.features import ACTION, ACTION_PREFIX
    from vla.heads.guidance import ActionPrefix

    policy, _, data = probe_data(checkpoint, dataset, repo_id, batches, batch_size)
    executed = slice(delay, delay + policy.config.n_action_steps)
    errors: dict[str, list[float]] = {}
    for i, batch in enumerate(data):
        truth = batch[ACTION]
        obs = {k: v for k, v in batch.items() if k not in (ACTION, f"{ACTION}_is_pad")}
        settings = {"d0": obs, "d0_other_obs": _other_observation(obs)}
        if policy.config.rtc_train_max_delay:
            weights = torch.zeros(truth.shape[:2])
            weights[:, :delay] = 1.0
            committed = ActionPrefix(truth, weights, method="condition")
            settings["committed"] = {**obs, ACTION_PREFIX: committed}
            settings["committed_other_obs"] = {**settings["d0_other_obs"], ACTION_PREFIX: committed}
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            for name, o in settings.items():
                pred = policy.sample_actions(o, noise=noise)
                errors.setdefault(name, []).append((pred[:, executed] - truth[:, executed]).pow(2).mean().item())
    return {name: sum(v) / len(v) for name, v in errors.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(ap)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--delay", type=int, default=4, help="committed actions, in control steps (200 ms at 20 Hz: 4)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "committed_probe.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for ckpt in args.checkpoints:
        results[str(ckpt)] = {"delay": args.delay, "samples": args.batches * args.batch_size,
                              **probe(str(ckpt), args.dataset, args.repo_id, args.delay, args.batches, args.batch_size)}
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    names = ["d0", "d0_other_obs", "committed", "committed_other_obs"]
    rows = [[c, *(f"{results[str(c)][n]:.4f}" if n in results[str(c)] else "-" for n in names)]
            for c in args.checkpoints]
    print(markdown_table(["checkpoint", *names], rows))


if __name__ == "__main__":
    main()
