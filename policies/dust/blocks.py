"""DUST's transformer blocks: adaLN-Zero DiT pieces, the multi-stream MM-DiT block, cross-attention.

Every stream's block is modulated (shift, scale, gate) by a conditioning vector ``c`` (B, D):
for the action and vision streams that is the embedding of **their own** flow time, which is
DUST's one change to the SD3 block. Modulations start at zero (adaLN-Zero), so every block
begins as the identity and training is stable from the first step.

Shapes: stream tokens (B, L_s, D); prefix (B, N_p, D) with mask (B, N_p) bool (True = real).
Attention here is bidirectional (no RoPE): positions come from the streams' own embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.heads import sinusoidal_embedding
from vla.layers import SwiGLU


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: normalized tokens (B, L, D) shifted / scaled by per-sample (B, D) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimeEmbedder(nn.Module):
    """Model time (B,) in [0, 1000) -> conditioning vector (B, D): sinusoid, then a SiLU MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, model_time: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(model_time, self.freq_dim).to(self.mlp[0].weight.dtype))


class Modulation(nn.Module):
    """c (B, D) -> ``n`` modulation vectors (B, D) each; zero-initialised (adaLN-Zero)."""

    def __init__(self, width: int, n: int):
        super().__init__()
        self.n = n
        self.proj = nn.Linear(width, n * width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: Tensor) -> list[Tensor]:
        return list(self.proj(F.silu(c)).chunk(self.n, dim=-1))


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, D) -> (B, h, L, D / h)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, h, L, hd) -> (B, L, h * hd)."""
    return x.transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Stream tokens attend to the prefix. The prefix's keys / values depend only on the
    observation, so :meth:`prefix_kv` is computed once per chunk and reused at every
    denoising step (the cross-attention form of a KV cache)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)

    def prefix_kv(self, prefix: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(prefix).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], prefix_mask: Tensor) -> Tensor:
        q = _heads(self.q(self.norm(x)), self.heads)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=prefix_mask[:, None, None, :])
        return self.out(_merge(y))


class StreamWeights(nn.Module):
    """One stream's own weights inside a block: norms, QKV, output, FFN, adaLN modulation and
    (optionally) cross-attention to the prefix."""

    def __init__(self, width: int, heads: int, ffn_dim: int, cross_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn = SwiGLU(width, ffn_dim)
        self.mod = Modulation(width, 6)  # shift / scale / gate for attention and for the FFN
        self.cross = CrossAttention(width, heads) if cross_attention else None


class MMDiTBlock(nn.Module):
    """SD3-style block over several streams: each stream has its own weights and its own
    conditioning; the streams meet only in one joint self-attention over their concatenation.

    forward(xs, cs, key_masks, cross_kv, prefix_mask) with xs[i] (B, L_i, D), cs[i] (B, D),
    key_masks[i] (B, L_i) bool or None (all real) -> new xs. ``cross_kv[i]`` is the prefix
    keys / values for stream i's cross-attention (None when the block has none).
    """

    def __init__(self, width: int, heads: int, ffn_dim: int, cross_attention: list[bool]):
        """One stream per entry of ``cross_attention`` (whether that stream cross-attends to the prefix)."""
        super().__init__()
        self.heads = heads
        self.streams = nn.ModuleList(StreamWeights(width, heads, ffn_dim, cross) for cross in cross_attention)

    def forward(self, xs: list[Tensor], cs: list[Tensor], key_masks: list[Tensor | None],
                cross_kv: list | None = None, prefix_mask: Tensor | None = None) -> list[Tensor]:
        mods = [s.mod(c) for s, c in zip(self.streams, cs)]
        qkvs = [s.qkv(modulate(s.norm1(x), m[0], m[1])) for s, x, m in zip(self.streams, xs, mods)]
        q, k, v = (torch.cat([_heads(t.chunk(3, dim=-1)[j], self.heads) for t in qkvs], dim=2) for j in range(3))
        mask = None
        if any(m is not None for m in key_masks):
            b = xs[0].shape[0]
            full = [m if m is not None else torch.ones(b, x.shape[1], dtype=torch.bool, device=x.device)
                    for x, m in zip(xs, key_masks)]
            mask = torch.cat(full, dim=1)[:, None, None, :]
        y = _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        out, start = [], 0
        for i, (s, x, m) in enumerate(zip(self.streams, xs, mods)):
            n = x.shape[1]
            x = x + m[2][:, None] * s.out(y[:, start:start + n])
            start += n
            if s.cross is not None:
                x = x + s.cross(x, cross_kv[i], prefix_mask)
            x = x + m[5][:, None] * s.ffn(modulate(s.norm2(x), m[3], m[4]))
            out.append(x)
        return out


class DiTBlock(nn.Module):
    """One stream alone: adaLN self-attention, cross-attention to the prefix, adaLN FFN."""

    def __init__(self, width: int, heads: int, ffn_dim: int):
        super().__init__()
        self.block = MMDiTBlock(width, heads, ffn_dim, [True])

    def forward(self, x: Tensor, c: Tensor, cross_kv, prefix_mask: Tensor) -> Tensor:
        return self.block([x], [c], [None], [cross_kv], prefix_mask)[0]

    def prefix_kv(self, prefix: Tensor) -> tuple[Tensor, Tensor]:
        return self.block.streams[0].cross.prefix_kv(prefix)


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then the stream's decoder."""

    def __init__(self, width: int, decoder: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod = Modulation(width, 2)
        self.decoder = decoder

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.mod(c)
        return self.decoder(modulate(self.norm(x), shift, scale))


def sincos_1d(n: int, width: int) -> Tensor:
    """Fixed 1-D sinusoidal position table (n, width)."""
    return sinusoidal_embedding(torch.arange(n), width)


def sincos_2d(h: int, w: int, width: int) -> Tensor:
    """Fixed 2-D sinusoidal table (h * w, width): half the channels encode the row, half the column."""
    rows = sinusoidal_embedding(torch.arange(h).repeat_interleave(w), width // 2)
    cols = sinusoidal_embedding(torch.arange(w).repeat(h), width - width // 2)
    return torch.cat([rows, cols], dim=-1)
