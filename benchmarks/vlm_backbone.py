"""Dita on a real-size VLM backbone (random weights): training step, peak memory, chunk latency.

    python -m benchmarks.vlm_backbone --device cuda               # SmolVLM-256M-sized Idefics3 + dita-base, bf16
    python -m benchmarks.vlm_backbone --device cpu --size tiny    # the same code on a tiny config (a smoke run)

The VLM is built from a config with SmolVLM-256M's sizes (SigLIP-base/16 at 512 px, pixel
shuffle 4 -> 64 tokens per image; a 30-layer, 576-wide SmolLM2 LM) with random weights: speed
and memory do not depend on the weights, and nothing is downloaded. It is saved to a temporary
directory and loaded through `backbone.name=vlm` like a real checkpoint. On top: dita-base
(12 layers, width 768), two 96x96 cameras (resized to the tower's 512 px), n_obs_steps 1,
the LM read at its middle layer with LoRA adapters, gradient checkpointing, bf16 weights.

Reported: seconds per training step (forward + backward + AdamW) at `--batch`, peak GPU memory
of training, and seconds per action chunk at batch 1 from raw images (the VLM runs once per
chunk: vision tower, truncated LM, then the cached Dita sampler), medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.common import machine, markdown_table, preset_config, write_section

STATE_DIM, ACTION_DIM = 11, 7
SIZES = {
    "smolvlm-256m": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=512, patch_size=16),
        text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, max_position_embeddings=8192),
        scale_factor=4, policy="dita-base"),
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                    patch_size=8),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512),
        scale_factor=2, policy="dita-small"),
}


def build_vlm_dir(size: str, directory: str) -> int:
    """Save a random-weight Idefics3 of `size` (and a tokenizer) to `directory`; returns its parameter count."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    from vla.backbone.embedded import load_text_encoder

    spec = SIZES[size]
    _, tokenizer = load_text_encoder()  # any tokenizer: ids stay inside the vocabulary below
    config = Idefics3Config(vision_config=spec["vision"], text_config={**spec["text"], "vocab_size": len(tokenizer)},
                            scale_factor=spec["scale_factor"])
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def batch(policy, b: int, device: str, with_actions: bool) -> dict:
    cfg = policy.config
    offsets = cfg.frame_offsets()
    t = cfg.n_obs_steps
    out = {f"observation.images.{c}": torch.rand(b, t, 3, 96, 96, device=device) for c in cfg.backbone.cameras}
    out["observation.state"] = torch.randn(b, t, STATE_DIM, device=device)
    out["task"] = ["lift the red cube"] * b
    if with_actions:
        h = len(offsets.get("action", range(cfg.horizon)))
        out["action"] = torch.rand(b, h, ACTION_DIM, device=device) * 2 - 1
        out["action_is_pad"] = torch.zeros(b, h, dtype=torch.bool, device=device)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, rounds: int, device: str) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="smolvlm-256m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--finetune", default="lora", choices=["frozen", "lora", "full"])
    args = parser.parse_args(argv)
    from vla.policy import make_policy

    header = machine(args.device)
    print(header)
    with tempfile.TemporaryDirectory() as directory:
        n_vlm = build_vlm_dir(args.size, directory)
        overrides = ["policy.backbone.name=vlm", f"policy.backbone.model={directory}", "policy.backbone.dtype=bfloat16",
                     f"policy.backbone.finetune={args.finetune}", "policy.backbone.gradient_checkpointing=true",
                     "policy.n_obs_steps=1"]
        cfg = preset_config(SIZES[args.size]["policy"], STATE_DIM, ACTION_DIM, overrides)
        policy = make_policy(cfg).to(args.device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    train_batch = batch(policy, args.batch, args.device, with_actions=True)

    def train_step():
        policy.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            loss, _ = policy.compute_loss(train_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train_times = timed(train_step, args.rounds, args.device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    obs = batch(policy, 1, args.device, with_actions=False)
    policy.eval()

    def chunk():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            policy.sample_actions(obs)

    chunk_times = timed(chunk, args.rounds, args.device)
    rows = [[f"{args.size}-sized Idefics3 ({n_vlm / 1e6:.0f} M params, random) + {cfg.name} "
             f"{SIZES[args.size]['policy']}, {args.finetune}, bf16, LM layer {policy.backbone.hidden_layer}",
             f"{statistics.median(train_times):.3f} s (batch {args.batch})",
             "n/a (CPU)" if peak is None else f"{peak:.1f} GiB",
             f"{statistics.median(chunk_times) * 1e3:.1f} ms",
             f"{sum(p.numel() for p in trainable) / 1e6:.1f} M"]]
    table = markdown_table(["configuration", "training step", "peak memory (training)", "chunk at batch 1",
                            "trainable params"], rows)
    body = f"## VLM backbone under Dita (`python -m benchmarks.vlm_backbone`)\n\nMachine: {header}.\n\n{table}"
    print(body)
    if args.size != "tiny":
        write_section(f"vlm-backbone-{args.device.split(':')[0]}", body)


if __name__ == "__main__":
    main()
