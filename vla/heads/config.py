"""The noise process's settings: a plain dataclass (no torch), so configs compose where no model runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoiseProcessConfig:
    kind: str = "diffusion"          # "diffusion" (DDPM train / DDIM sample) or "flow"
    num_inference_steps: int = 10    # denoising steps at sampling time
    # diffusion only
    num_train_timesteps: int = 100   # Diffusion Policy / Dita finetuning use 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True         # actions are normalized to [-1, 1]
    # flow only: t ~ scale * Beta(alpha, beta) + (1 - scale), mass near the noise end (pi0)
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
