"""Training throughput (samples/s): dita-small through vla's Trainer vs LeRobot's DiffusionPolicy.

What is measured, on the SAME collected dataset and at the same batch size:
- ``vla dita-small``: ``Trainer.train_step(trainer.data.next_batch())`` of a Trainer built from
  the Hydra composition ``vla train`` uses (``policy=dita-small``, train preset ``cpu``), on the
  cached-features path (the default): batch gathering, normalization, forward, backward,
  gradient clipping, AdamW and the LR scheduler. Logging and checkpoints are left out.
- ``LeRobot DiffusionPolicy``: LeRobot's own step: a batch from a plain ``LeRobotDataset``
  (its own ``delta_timestamps``: 2 observed frames per camera, horizon 16) through a shuffling
  DataLoader, LeRobot's diffusion preprocessor (normalization), ``policy.forward`` (loss),
  backward, gradient clipping and AdamW. Config: the dataset's two 96x96 cameras, 84x84 crop,
  GroupNorm ResNet18 from scratch (offline), LeRobot's default U-Net, DDPM training.

samples/s = batch_size / seconds per step (data wait included on both sides). The feature
cache vla builds once per (dataset, backbone) is measured separately (cold Trainer
construction in an empty cache directory minus a warm one): it is a one-time cost, paid again
only when the dataset or the backbone changes.

Fairness of the timing: both run fp32 on the same CPU threads, in interleaved blocks; every
block opens a fresh iterator (DataLoader workers start inside the block and are shut down
after it, so they never run while the other candidate is timed) and discards ``--warm`` steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks.common import (
    dataset_args, ensure_dataset, interleaved_blocks, machine, markdown_table, median, set_threads, spread,
    write_section,
)


def make_trainer(args, cache_dir: str, out_dir: str):
    """A vla Trainer as ``vla train`` composes it; returns (trainer, construction seconds)."""
    from vla.cli import compose
    from vla.train import Trainer

    os.environ["VLA_CACHE"] = cache_dir
    run, policy_cfg = compose([
        "policy=dita-small", f"dataset.root={args.dataset_root}", f"dataset.repo_id={args.repo_id}",
        f"output_dir={out_dir}", f"train.batch_size={args.batch_size}", "device=cpu",
    ])
    t0 = time.perf_counter()
    trainer = Trainer(run, policy_cfg, progress=False)
    trainer.policy.train()
    return trainer, time.perf_counter() - t0


def vla_side(args, tmp: str) -> tuple[callable, dict]:
    """The vla step function, and the caching cost (cold minus warm Trainer construction)."""
    from vla.backbone import make_backbone
    from vla.cli import compose

    _, cfg = compose(["policy=dita-small"])  # load the encoders once: imports are no caching cost
    make_backbone(cfg.backbone, width=8, n_obs_steps=cfg.n_obs_steps, state_dim=1)  # discarded
    _, cold = make_trainer(args, f"{tmp}/cache", f"{tmp}/run-cold")
    trainer, warm = make_trainer(args, f"{tmp}/cache", f"{tmp}/run")

    def steps():
        while True:
            yield trainer.train_step(trainer.data.next_batch())

    n_params = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    return steps, {"cold_s": cold, "warm_s": warm, "build_s": cold - warm, "params": n_params}


def lerobot_side(args) -> tuple[callable, dict]:
    """LeRobot's DiffusionPolicy training step on the same dataset, as lerobot-train runs it."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    meta = LeRobotDataset(args.repo_id, root=args.dataset_root, video_backend="pyav").meta
    inputs = {k: PolicyFeature(FeatureType.VISUAL, (ft["shape"][2], *ft["shape"][:2]))
              for k, ft in meta.features.items() if ft["dtype"] in ("video", "image")}
    shape = {k: tuple(ft["shape"]) for k, ft in meta.features.items()}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, shape["observation.state"])
    cfg = DiffusionConfig(
        input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, shape["action"])},
        device="cpu", n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=(84, 84), use_group_norm=True,
        pretrained_backbone_weights=None,
    )
    policy = DiffusionPolicy(cfg).train()
    pre, _ = make_diffusion_pre_post_processors(cfg, dataset_stats=meta.stats)
    delta = {k: [i / meta.fps for i in cfg.observation_delta_indices] for k in inputs}
    delta["action"] = [i / meta.fps for i in cfg.action_delta_indices]
    dataset = LeRobotDataset(args.repo_id, root=args.dataset_root, video_backend="pyav", delta_timestamps=delta)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optimizer_lr, betas=cfg.optimizer_betas,
                            weight_decay=cfg.optimizer_weight_decay)

    def steps():
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.num_workers)
        for batch in loader:
            loss, _ = policy.forward(pre(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
            opt.step()
            yield loss.item()

    n_params = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return steps, {"params": n_params, "frames": len(dataset)}


def report(args, desc: str, times: dict, vla: dict, lr: dict) -> str:
    med = {k: median(v) for k, v in times.items()}
    sps = {k: args.batch_size / v for k, v in med.items()}
    (v_name, l_name) = list(times)
    rows = [[k, f"{p['params'] / 1e6:.1f} M", f"{med[k]:.3f}", spread(times[k], ".3f"), f"{sps[k]:.1f}"]
            for k, p in ((v_name, vla), (l_name, lr))]
    table = markdown_table(["training step (batch %d)" % args.batch_size, "trainable params", "s / step",
                            "IQR s", "samples/s"], rows)
    epoch = lr["frames"] / sps[l_name]
    gain = med[l_name] - med[v_name]  # seconds vla saves per step
    ahead = f"vla is ahead after {vla['build_s'] / gain:.0f} steps" if gain > 0 else "vla never catches up"
    lines = [
        f"- vla dita-small trains at {sps[v_name] / sps[l_name]:.1f}x the samples/s of LeRobot's DiffusionPolicy",
        f"- one-time feature caching: {vla['build_s']:.1f} s for {lr['frames']} frames (cold Trainer "
        f"{vla['cold_s']:.1f} s, warm {vla['warm_s']:.1f} s), i.e. {vla['build_s'] / epoch:.2f} of one "
        f"DiffusionPolicy epoch ({epoch:.0f} s); counting it, {ahead}",
    ]
    flag = f" --threads {args.threads}" if args.threads else ""
    return (f"## Training throughput ({torch.get_num_threads()} thread(s))\n\n{desc}. "
            f"Dataset `{args.dataset_root}` ({lr['frames']} frames), "
            f"{args.rounds} interleaved blocks (vla {args.vla_steps} steps, LeRobot {args.lerobot_steps}) after "
            f"{args.warm} discarded; LeRobot DataLoader workers={args.num_workers}; "
            f"`python -m benchmarks.train_throughput{flag}`.\n\n{table}\n\n" + "\n".join(lines) +
            "\n\nBoth read 2 observed frames per camera and a 16-step action chunk per sample. dita-small's "
            "frozen EfficientNet-Lite0 / MiniLM encoders are not trained (their features are cached); "
            "DiffusionPolicy trains its two ResNet18 encoders and its U-Net end to end, as LeRobot does.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dataset_args(ap)
    ap.add_argument("--batch-size", type=int, default=64, help="64 = the cpu train preset")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vla-steps", type=int, default=10)
    ap.add_argument("--lerobot-steps", type=int, default=3)
    ap.add_argument("--warm", type=int, default=1)
    ap.add_argument("--num-workers", type=int, default=2, help="LeRobot DataLoader workers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)
    ensure_dataset(args.dataset_root, args.episodes)
    desc = machine()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="vla-bench-train-") as tmp:
        vla_steps, vla = vla_side(args, tmp)
        lr_steps, lr = lerobot_side(args)
        cands = {"vla dita-small (Trainer.train_step, cached features)": (vla_steps, args.vla_steps),
                 "LeRobot DiffusionPolicy (DataLoader + forward/backward + AdamW)": (lr_steps, args.lerobot_steps)}
        times = interleaved_blocks(cands, rounds=args.rounds, warm=args.warm, unit="s/step", scale=1.0, fmt=".3f")
    text = report(args, desc, times, vla, lr)
    print("\n" + text)
    if not args.no_write:
        write_section(f"train-throughput-{torch.get_num_threads()}t", text)


if __name__ == "__main__":
    main()
