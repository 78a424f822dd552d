"""Train a LeRobot policy (ACT, DiffusionPolicy, ...) with LeRobot's own pieces, on a budget.

What ``lerobot-train`` does, minus what a side-by-side run cannot use (accelerate, wandb, hub
pushes, mid-run env eval), plus a wall-clock budget:

    LeRobotDataset (delta timestamps from the policy config, pyav decoding)
    -> EpisodeAwareSampler (the policy's drop_n_last_frames) -> preprocessor (normalize)
    -> policy.forward -> the config's optimizer preset, grad clip, scheduler preset
    -> policy / preprocessor / postprocessor.save_pretrained  (a standard pretrained_model/)

The inputs are the policy's to choose (``--features``): LeRobot would otherwise read every
observation key of the dataset, privileged simulator state included. The scheduler preset
(e.g. DiffusionPolicy's warmup + cosine) is kept; with ``--max-seconds`` its decay ends when
the time does (`vla.budget.Budget`). Anything else differing from LeRobot's defaults is a
``--set key=value`` on the command line, so the printed command says what changed.

    python -m benchmarks.lerobot_train --policy act --dataset-root data/lift --repo-id local/lift \\
        --output-dir outputs/act --steps 100000 --max-seconds 1500 --batch-size 8 \\
        --features observation.images.agentview observation.images.wrist observation.state \\
        --set chunk_size=40 n_action_steps=8 pretrained_backbone_weights=None
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

MODEL_DIR = "pretrained_model"


def parse_value(text: str):
    """``None``, numbers and sequences as Python literals (sequences as tuples, which LeRobot's
    configs declare and its config writer insists on); anything else as a string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def make_config(policy_type: str, meta, features: list[str], overrides: dict, device: str):
    """The LeRobot policy config: its defaults, then ``overrides``, reading only ``features``."""
    from lerobot.policies.factory import make_policy_config
    from lerobot.utils.feature_utils import dataset_to_policy_features

    available = dataset_to_policy_features(meta.features)
    missing = [f for f in features if f not in available]
    if missing:
        raise SystemExit(f"error: the dataset has no feature {missing[0]!r} (it has {sorted(available)})")
    cfg = make_policy_config(policy_type, device=device, push_to_hub=False, **overrides)
    cfg.input_features = {k: available[k] for k in features}  # make_policy adds the action as output
    return cfg


def build(args):
    """(dataset, policy, preprocessor, postprocessor, optimizer, scheduler, budget, grad clip)."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from vla.budget import Budget

    meta = LeRobotDatasetMetadata(args.repo_id, root=args.dataset_root)
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = make_config(args.policy, meta, args.features, overrides, "cpu")
    dataset = LeRobotDataset(args.repo_id, root=args.dataset_root, video_backend="pyav",
                             delta_timestamps=resolve_delta_timestamps(cfg, meta))
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    optim_cfg, sched_cfg = cfg.get_optimizer_preset(), cfg.get_scheduler_preset()
    optimizer = optim_cfg.build(policy.get_optim_params())
    budget = Budget(args.steps, args.max_seconds, getattr(sched_cfg, "num_warmup_steps", 0) or 0)
    scheduler = None
    if sched_cfg is not None:  # the preset, evaluated where the budget says the run is
        step_lambda = sched_cfg.build(optimizer, args.steps).lr_lambdas[0]
        scheduler = budget.scheduler(optimizer, step_lambda)
    return dataset, policy, pre, post, optimizer, scheduler, budget, optim_cfg.grad_clip_norm


def batches(dataset, policy, batch_size: int, seed: int, num_workers: int):
    """Endless batches in LeRobot's order: episode-aware shuffling, epoch after epoch."""
    from lerobot.datasets import EpisodeAwareSampler

    sampler = EpisodeAwareSampler(
        dataset.meta.episodes["dataset_from_index"], dataset.meta.episodes["dataset_to_index"],
        episode_indices_to_use=dataset.episodes, drop_n_last_frames=getattr(policy.config, "drop_n_last_frames", 0),
        shuffle=True, seed=seed, absolute_to_relative_idx=dataset.absolute_to_relative_idx)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                         drop_last=False, persistent_workers=num_workers > 0)
    while True:
        yield from loader


def train(args) -> dict:
    from lerobot.utils.random_utils import set_seed

    set_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, policy, pre, post, optimizer, scheduler, budget, clip = build(args)
    data = batches(dataset, policy, args.batch_size, args.seed, args.num_workers)
    policy.train()
    step, stopped, window, last_loss = 0, None, [], None
    bar = tqdm(total=budget.bar_total(), desc=f"train lerobot/{args.policy}", unit="step")
    metrics = (out / "metrics.csv").open("w", newline="")
    log = csv.writer(metrics)
    log.writerow(["step", "elapsed_s", "loss", "lr", "grad_norm"])
    budget.start()
    while not (stopped := budget.exhausted(step)):
        loss, _ = policy.forward(pre(next(data)))
        if not torch.isfinite(loss):
            raise SystemExit(f"error: loss became {loss.item()} at step {step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), clip if clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        step += 1
        window.append(loss.item())
        bar.update(1)
        if step % args.log_every == 0 or budget.exhausted(step):
            last_loss = sum(window) / len(window)
            window = []
            bar.set_postfix(loss=f"{last_loss:.4f}", **({"budget": budget.left()} if args.max_seconds else {}))
            log.writerow([step, f"{budget.elapsed():.1f}", f"{last_loss:.6g}",
                          f"{optimizer.param_groups[0]['lr']:.6g}", f"{float(grad_norm):.4g}"])
            metrics.flush()
    bar.close()
    metrics.close()
    save(out / MODEL_DIR, policy, pre, post)
    summary = {"policy": f"lerobot/{args.policy}", "steps": step, "stopped_by": stopped,
               "samples_seen": step * args.batch_size, "train_seconds": round(budget.elapsed(), 1),
               "final_loss": last_loss, "batch_size": args.batch_size, "world_size": 1,
               "torch_threads": torch.get_num_threads()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save(directory: Path, policy, pre, post) -> None:
    """policy + processors into ``directory`` atomically (assembled beside it, then renamed)."""
    import shutil

    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    pre.save_pretrained(tmp)
    post.save_pretrained(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="a LeRobot policy type: act, diffusion, ...")
    ap.add_argument("--dataset-root", required=True)
    ap.add_argument("--repo-id", default="local/dataset")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--features", nargs="+", required=True, help="observation keys the policy reads")
    ap.add_argument("--steps", type=int, required=True, help="most optimizer steps (the schedule's length)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop after this much training time")
    ap.add_argument("--batch-size", type=int, default=8, help="lerobot-train's default: 8")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (video decoding)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="policy config overrides")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    s = train(args)
    print(f"lerobot/{args.policy}: {s['steps']} steps in {s['train_seconds']:.0f} s of training "
          f"({time.time() - started:.0f} s in all), final loss {s['final_loss']}; "
          f"checkpoint: {Path(args.output_dir) / MODEL_DIR}")


if __name__ == "__main__":
    main()
