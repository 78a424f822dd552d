"""The one time convention shared by every action head.

    t in [0, 1];  t = 0 is clean data, t = 1 is pure noise.

Training draws ``t`` with :meth:`NoiseProcess.sample_time`, builds ``x_t`` with
:meth:`add_noise` and regresses :meth:`target`. Sampling starts from noise at
``t = 1`` and walks the decreasing grid :meth:`sampling_times` with :meth:`step`.

How other conventions map onto it (see methods.md, section 0):
- DDPM integer step ``k`` of ``T`` (high k = noisier): ``t = k / T``.
- pi0 / diffusers flow matching: identical (t = 1 noise).
- GR00T / DUST ``tau`` (tau = 1 data): ``tau = 1 - t`` and their velocity is ``-u``.

A model never sees ``t`` directly: it embeds :meth:`NoiseProcess.model_time`, a float
in [0, 1000) for every process, so one sinusoidal embedding serves both families.
Processes are stateless across calls, so a policy with two streams (DUST) can run two of
them at different rates, and a fixed sampling loop can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor



class NoiseProcess(ABC):
    """Interface of a noise process over tensors ``x0`` of any shape ``(B, ...)``."""

    @abstractmethod
    def sample_time(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """Training times, ``(B,)`` float in [0, 1]."""

    @abstractmethod
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t`` from clean ``x0`` and ``noise`` (same shape) at times ``t`` ``(B,)``."""

    @abstractmethod
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the model regresses at ``(x_t, t)``; same shape as ``x0``."""

    @abstractmethod
    def sampling_times(self) -> list[float]:
        """Decreasing grid ``[t_0 > t_1 > ... > t_N = 0]`` of N + 1 times, t_0 at (or next to) 1."""

    @abstractmethod
    def step(self, x_t: Tensor, model_out: Tensor, t: float, t_next: float) -> Tensor:
        """One sampler update from ``t`` to ``t_next < t``."""

    @abstractmethod
    def model_time(self, t: Tensor | float) -> Tensor:
        """The scalar the model embeds for time ``t`` (float, [0, 1000))."""

    # --- the flow view, for guidance (vla/heads/guidance.py) ----------------------------------
    # Every process's state is a scaled rectified-flow state: x_t = c * ((1 - s) x0 + s eps), and
    # its model output says what x0 and eps are. Guidance written once for the flow (RTC's
    # formulas) then serves every process.
    @abstractmethod
    def flow_time(self, t: float) -> tuple[float, float]:
        """``(s, c)``: the flow time and scale of this process's state at time ``t``."""

    @abstractmethod
    def to_velocity(self, x_t: Tensor, model_out: Tensor, t: float) -> Tensor:
        """The flow velocity ``u = eps - x0`` the model output implies at ``(x_t, t)``."""

    @abstractmethod
    def from_velocity(self, x_t: Tensor, velocity: Tensor, t: float) -> Tensor:
        """The model output that implies flow velocity ``velocity`` at ``(x_t, t)`` (inverse of
        :meth:`to_velocity`)."""

    def clip_clean(self, x0: Tensor) -> Tensor:
        """The clean estimate as this process's sampler uses it (DDIM with ``clip_sample`` clamps it)."""
        return x0


def sinusoidal_embedding(time: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal embedding of ``time`` ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=time.device) / half)
    args = time.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
