"""Epsilon-prediction diffusion: diffusers' DDPM schedule for training, DDIM for sampling."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from vla.heads.base import NoiseProcess
from vla.heads.config import NoiseProcessConfig


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

    # x_t = sqrt(a) x0 + sqrt(1 - a) eps  =  c ((1 - s) x0 + s eps)  with  c = sqrt(a) + sqrt(1 - a)
    def _alpha_bar(self, t: float) -> float:
        return float(self.sampler.alphas_cumprod[int(round(t * self.T))])

    def flow_time(self, t: float) -> tuple[float, float]:
        a = self._alpha_bar(t)
        c = a ** 0.5 + (1 - a) ** 0.5
        return (1 - a) ** 0.5 / c, c

    def to_velocity(self, x_t: Tensor, model_out: Tensor, t: float) -> Tensor:
        a = self._alpha_bar(t)
        x0 = (x_t - (1 - a) ** 0.5 * model_out) / a ** 0.5
        return model_out - x0

    def clip_clean(self, x0: Tensor) -> Tensor:
        return x0.clamp(-1.0, 1.0) if self.cfg.clip_sample else x0  # diffusers' clip_sample_range: 1

    def from_velocity(self, x_t: Tensor, velocity: Tensor, t: float) -> Tensor:
        s, c = self.flow_time(t)
        return x_t / c + (1 - s) * velocity  # eps = x~ + (1 - s) u, where x~ = x_t / c = x0 + s u
