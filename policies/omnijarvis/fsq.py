"""Finite scalar quantization (Mentzer et al., 2023), the quantizer OmniJARVIS tokenizes with.

Each of the d dimensions of a latent is squashed to a bounded range and rounded to one of
``levels[i]`` values; the code is the vector of those values scaled to [-1, 1], its index
the mixed-radix number of its digits. No codebook to learn, no commitment loss, no collapse
(the paper's VQ-VAE variant collapsed). Gradients pass the rounding straight through.

    levels [8, 8, 8, 6, 5]  ->  codebook of 8*8*8*6*5 = 15,360 codes, one 5-d code per behavior
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    """``forward(z)``: latent (..., d) -> quantized code (..., d), values in [-1, 1].

    Conversions: code <-> digits (..., d) ints in [0, levels[i]) <-> index (...) in [0, size).
    """

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        if not levels or min(levels) < 2:
            raise ValueError(f"fsq levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels_list = list(levels)
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        # digit i has weight prod(levels[:i]): the first dimension varies fastest
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        self.register_buffer("half_width", (lv // 2).float(), persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels_list)

    def bound(self, z: Tensor) -> Tensor:
        """Squash to (-L/2, L/2) (shifted by half a step for even L) so rounding yields L values."""
        lv = self.levels.to(z.dtype)
        half = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ over {self.dim} dims got a latent of size {z.shape[-1]}")
        bounded = self.bound(z.float())
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through
        return (rounded / self.half_width).to(z.dtype)

    def codes_to_digits(self, codes: Tensor) -> Tensor:
        return (codes.float() * self.half_width + self.half_width).round().long()

    def digits_to_codes(self, digits: Tensor) -> Tensor:
        if (digits < 0).any() or (digits >= self.levels).any():
            raise ValueError("fsq digits out of range for their levels")
        return (digits.float() - self.half_width) / self.half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        return (self.codes_to_digits(codes) * self.basis).sum(-1)

    def indices_to_digits(self, indices: Tensor) -> Tensor:
        return (indices.long()[..., None] // self.basis) % self.levels

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.digits_to_codes(self.indices_to_digits(indices))
