"""Epsilon-prediction diffusion: diffusers' DDPM schedule for training, DDIM for sampling."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from vla.heads.base import NoiseProcess, NoiseProcessConfig


class DiffusionProcess(NoiseProcess):
    """DDPM (Ho et al.) with an epsilon target; integer step ``k`` maps to ``t = k / T``."""

    def __init__(self, cfg: NoiseProcessConfig):
        if cfg.num_inference_steps > cfg.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps={cfg.num_inference_steps} exceeds num_train_timesteps={cfg.num_train_timesteps}"
            )
        self.cfg = cfg
        common = dict(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.clip_sample,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**common)
        # "trailing" spacing starts at the noisiest step (k = T - 1), as training saw it.
        self.sampler = DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing")
        self.sampler.set_timesteps(cfg.num_inference_steps)
        # e.g. T=100, N=10 -> k = 99, 89, ..., 9; the last step lands on clean data (t = 0).
        ks = [int(k) for k in self.sampler.timesteps]
        self._times = [k / cfg.num_train_timesteps for k in ks] + [0.0]

    @property
    def T(self) -> int:
        return self.cfg.num_train_timesteps

    def _steps(self, t: Tensor) -> Tensor:
        return (t * self.T).round().long().clamp_(0, self.T - 1)

    def sample_time(self, batch_size: int, device="cpu") -> Tensor:
        k = torch.randint(0, self.T, (batch_size,), device=device)
        return k.float() / self.T

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.train_scheduler.add_noise(x0, noise, self._steps(t))

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise

    def sampling_times(self) -> list[float]:
        return list(self._times)

    def step(self, x_t: Tensor, model_out: Tensor, t: float, t_next: float) -> Tensor:
        # DDIM infers the previous step from its own grid; t_next is implied by it.
        k = int(round(t * self.T))
        return self.sampler.step(model_out, k, x_t).prev_sample

    def model_time(self, t) -> Tensor:
        # The integer DDPM step, as Dita's timestep token embeds it.
        t = torch.as_tensor(t, dtype=torch.float32)
        return (t * self.T).round()
