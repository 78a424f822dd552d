"""Transformer building blocks shared by the policies (LLaMA-style: RMSNorm, RoPE, SwiGLU).

Attention takes an optional :class:`StaticKVCache`: keys and values are written into
preallocated buffers at fixed positions, so a sampling loop that reuses a cached prefix has
static shapes and can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm).to(x.dtype) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding tables up to ``max_len`` positions."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int) -> Tensor:
        """Rotate ``x`` (B, h, L, hd) as positions start .. start + L - 1."""
        n = x.shape[-2]
        cos, sin = self.cos[start:start + n].to(x.dtype), self.sin[start:start + n].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.flatten(-2)


class StaticKVCache:
    """Preallocated keys / values ``(layers, B, heads, max_len, head_dim)``, written in place.

    For sampling (no autograd): static shapes, so a loop over it can be a CUDA graph.
    """

    def __init__(self, n_layers: int, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (n_layers, batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write positions [start, start + L) and return keys / values of [0, start + L)."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GrowingKVCache:
    """Keys / values kept by concatenation: differentiable, for training through a shared prefix."""

    def __init__(self):
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.k:
            if self.k[layer].shape[2] != start:
                raise ValueError(f"cache holds {self.k[layer].shape[2]} positions, asked to append at {start}")
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def fork(self) -> "GrowingKVCache":
        """A cache holding the same keys / values: appending to it leaves this one as it is (a shared
        prefix that several suffixes extend in turn, e.g. one per guided denoising step)."""
        out = GrowingKVCache()
        out.k, out.v = dict(self.k), dict(self.v)
        return out

    def repeat_interleave(self, n: int) -> "GrowingKVCache":
        """The same cache with every batch row repeated ``n`` times (row b -> rows b*n .. b*n+n-1)."""
        out = GrowingKVCache()
        out.k = {i: t.repeat_interleave(n, dim=0) for i, t in self.k.items()}
        out.v = {i: t.repeat_interleave(n, dim=0) for i, t in self.v.items()}
        return out


KVCache = StaticKVCache | GrowingKVCache


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rotary: Rotary, mask: Tensor, start: int = 0,
                cache: "KVCache | None" = None, layer: int = 0) -> Tensor:
        """``x`` (B, L, D) at positions start..start+L-1; ``mask`` (B, 1, L, L_keys) bool, True = attend.

        With a cache, this call's keys / values are stored at [start, start + L) and the
        queries attend over cache positions [0, start + L); without one, L_keys = L.
        """
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, hd)
        q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, h, L, hd)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderBlock(nn.Module):
    """Pre-norm LLaMA block: x + attn(norm(x)); x + swiglu(norm(x))."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ffn = SwiGLU(dim, ffn_dim)

    def forward(self, x: Tensor, rotary: Rotary, mask: Tensor, start: int = 0,
                cache: "KVCache | None" = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rotary, mask, start, cache, layer)
        return x + self.ffn(self.ffn_norm(x))


class AttentionReadout(nn.Module):
    """Learned queries attend over a token sequence; their outputs, concatenated, map to a vector.

    (B, N, D) tokens, (B, N) bool mask (True = real) -> (B, out_dim). Several queries let
    different outputs come from different tokens (one object's pose from one camera's token).
    """

    def __init__(self, width: int, out_dim: int, queries: int = 4, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(queries * width), nn.Linear(queries * width, out_dim))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        q = self.queries.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        h, _ = self.attn(q, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return self.out(h.flatten(1))


def causal_mask(key_mask: Tensor) -> Tensor:
    """Causal attention mask combined with key padding: ``key_mask`` (B, L) -> (B, 1, L, L) bool."""
    n = key_mask.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=key_mask.device).tril()
    return causal[None, None] & key_mask[:, None, None, :]


def default_ffn_dim(width: int) -> int:
    """LLaMA's 8/3 * width, rounded up to a multiple of 64."""
    return 64 * ((8 * width // 3 + 63) // 64)
