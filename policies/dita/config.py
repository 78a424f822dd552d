"""Dita configuration. Presets: ``configs/policy/dita-small.yaml`` and ``dita-base.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.heads.config import NoiseProcessConfig
from vla.policy_config import PolicyConfig


@dataclass
class DitaConfig(PolicyConfig):
    name: str = "dita"
    width: int = 256          # transformer width; the backbone projects its tokens to it
    depth: int = 6            # decoder blocks (dita-base: 12)
    heads: int = 4            # attention heads (dita-base: 12)
    ffn_dim: int = 0          # SwiGLU hidden size; 0 = LLaMA's 8/3 * width rounded to 64
    attn_dropout: float = 0.0  # the paper uses 0.1 at scale; small data trains better without
    # Epsilon-prediction DDPM, 100 train steps, squaredcos_cap_v2, DDIM with 10 steps: Dita's finetuning setup.
    noise: NoiseProcessConfig = field(
        default_factory=lambda: NoiseProcessConfig(kind="diffusion", num_train_timesteps=100, num_inference_steps=10)
    )
    # Run the prefix once per chunk and reuse its keys / values at every denoising step.
    # Exact: the causal mask means the prefix never attends to the (changing) action tokens.
    use_prefix_cache: bool = True
    # Training: denoise each observation at this many noise levels, sharing one prefix pass
    # (the same cache trick). The prefix is most of the sequence, so K > 1 buys K times the
    # denoising samples for a fraction of the compute.
    noise_samples: int = 1
