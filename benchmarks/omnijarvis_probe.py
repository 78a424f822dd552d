"""Where does OmniJARVIS lose against Dita: in the behavior decoder, or in the VLA's choice of behavior?

    PYTHONPATH=. python -m benchmarks.omnijarvis_probe --dataset outputs/quality/data/stack-align \
        --repo-id local/stack-align --checkpoint <OmniJARVIS stage-2 run> --reference <Dita run>

Offline, on the training data's own windows (normalized actions, the same samples and noise for
every row): the error of the actions executed after a re-plan (chunk positions 0 ..
n_action_steps - 1, decoded at the behavior's first step, or at ``--step``) when the decoder gets
- ``own_code``: the window's own code (the tokenizer's encoder saw the future: an oracle, the
  best any choice of behavior can do with this decoder);
- ``vla_code``: the code the VLA generates from the instruction, memory and observation (what runs);
- ``other_code``: another window's code (how much the decoder relies on the code at all);
with the VLA's digit accuracy and exact-code rate against the own code, and, for each
``--reference`` checkpoint (e.g. Dita on the same data), the same error of its ``sample_actions``
on batches of the same dataset (its own sampler: a chunk per frame rather than per window; it
counts the padded steps past an episode's end, which this probe leaves out: a few % of samples).
Results go to ``benchmarks/omnijarvis_probe.json`` (per checkpoint) and print as a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import REPO, markdown_table
from benchmarks.committed_probe import add_probe_arguments, probe_data
from benchmarks.committed_probe import probe as reference_errors  # Dita's error on the same data

SETTINGS = ["own_code", "vla_code", "other_code"]


def probe(checkpoint: str, dataset: str, repo_id: str, batches: int, batch_size: int, step: int = 0) -> dict:
    from policies.omnijarvis.model import OmniJarvisPolicy

    policy, _, data = probe_data(checkpoint, dataset, repo_id, batches, batch_size)
    if not isinstance(policy, OmniJarvisPolicy) or policy.vla is None:
        raise SystemExit(f"error: {checkpoint} is not an OmniJARVIS stage-2 (VLA) checkpoint")
    fsq = policy.behavior_tokenizer.fsq
    n = policy.config.n_action_steps
    sums = {k: 0.0 for k in [*SETTINGS, "digit_accuracy", "exact_code"]}
    for i, batch in enumerate(data):
        own = fsq.indices_to_codes(policy.encode_behavior(batch))
        chosen = policy.choose_behavior(batch).to(own.dtype)
        j = torch.full((len(own),), step, dtype=torch.long)
        noise = torch.randn(len(own), policy.config.horizon, policy.config.action_dim,
                            generator=torch.Generator().manual_seed(i))
        for name, codes in zip(SETTINGS, (own, chosen, own.roll(1, 0))):
            pred, target, pad = policy.reconstruct(batch, j, noise, codes)
            keep = (~pad[:, :n]).unsqueeze(-1).float()
            sums[name] += (((pred[:, :n] - target[:, :n]) ** 2 * keep).sum() / (keep.sum() * pred.shape[-1])).item()
        same = fsq.codes_to_digits(chosen) == fsq.codes_to_digits(own)  # (B, n_codes, d)
        sums["digit_accuracy"] += same.float().mean().item()
        sums["exact_code"] += same.flatten(1).all(1).float().mean().item()
    return {k: v / batches for k, v in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(ap)
    ap.add_argument("--checkpoint", required=True, help="an OmniJARVIS stage-2 run or checkpoint")
    ap.add_argument("--reference", nargs="*", default=[], help="other policies' runs, e.g. Dita on the same data")
    ap.add_argument("--step", type=int, default=0,
                    help="decode at this step of the behavior (0: the re-plan; n_action_steps: the next chunk)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "omnijarvis_probe.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    row = {"samples": args.batches * args.batch_size, "dataset": args.dataset, "step": args.step,
           **probe(args.checkpoint, args.dataset, args.repo_id, args.batches, args.batch_size, args.step)}
    for ref in args.reference:  # delay 0: the first n_action_steps of a chunk sampled from the frame
        row[f"reference {ref}"] = reference_errors(ref, args.dataset, args.repo_id, 0, args.batches,
                                                   args.batch_size)["d0"]
    results[f"{args.checkpoint}@step{args.step}"] = row
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    cells = [f"{row[k]:.4f}" for k in SETTINGS] + [f"{row['digit_accuracy']:.0%}", f"{row['exact_code']:.0%}"]
    cells += [f"{row[f'reference {r}']:.4f}" for r in args.reference]
    print(markdown_table(["", *SETTINGS, "digit accuracy", "exact code",
                          *(f"reference {i + 1}" for i in range(len(args.reference)))],
                         [[f"{args.checkpoint} at step {args.step}", *cells]]))
    return row


if __name__ == "__main__":
    main()
