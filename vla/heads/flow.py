"""Rectified-flow matching with Euler sampling (pi0's sign convention, GR00T's Beta time law).

Written out rather than taken from diffusers' FlowMatchEulerDiscreteScheduler because that
scheduler keeps a step index between calls; a stateless step is what two streams sampled
at different rates (DUST) and a CUDA-graph-captured loop need. The update is one line.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vla.heads.base import NoiseProcess
from vla.heads.config import NoiseProcessConfig


class FlowMatchingProcess(NoiseProcess):
    """``x_t = (1 - t) x0 + t eps``; the model predicts ``u = eps - x0``; Euler from t=1 to 0."""

    def __init__(self, cfg: NoiseProcessConfig):
        self.cfg = cfg
        self._beta = torch.distributions.Beta(
            torch.tensor(cfg.time_beta_alpha), torch.tensor(cfg.time_beta_beta)
        )

    def sample_time(self, batch_size: int, device="cpu") -> Tensor:
        b = self._beta.sample((batch_size,)).to(device)
        return self.cfg.time_scale * b + (1.0 - self.cfg.time_scale)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        t = t.view(-1, *([1] * (x0.dim() - 1)))
        return (1.0 - t) * x0 + t * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise - x0

    def sampling_times(self) -> list[float]:
        n = self.cfg.num_inference_steps
        return [1.0 - i / n for i in range(n + 1)]

    def step(self, x_t: Tensor, model_out: Tensor, t: float, t_next: float) -> Tensor:
        return x_t + (t_next - t) * model_out

    def model_time(self, t) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float32) * 1000.0

    def flow_time(self, t: float) -> tuple[float, float]:
        return float(t), 1.0

    def to_velocity(self, x_t: Tensor, model_out: Tensor, t: float) -> Tensor:
        return model_out

    def from_velocity(self, x_t: Tensor, velocity: Tensor, t: float) -> Tensor:
        return velocity
