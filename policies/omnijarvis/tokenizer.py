"""The behavior tokenizer: a bidirectional transformer over a window of C frames -> FSQ codes.

Per frame, the shared backbone's prefix for that single observation (its visual, state and
instruction tokens) is pooled to one vector by learned attention queries (GROOT pools its
per-frame features by cross-attention too). ``n_codes`` learned summary tokens are prepended
to the C frame vectors, a bidirectional transformer runs over them, and each summary token is
projected to ``len(fsq_levels)`` dims, normalized over the batch (``latent_norm``, see
below) and quantized. The encoder sees observations only, as
in OmniJARVIS: what the arm does shows in how the views and the proprioception change.

    frames (B, C, ...), state (B, C, D_s), valid (B, C) -> codes (B, n_codes, d) in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policies.omnijarvis.config import OmniJarvisConfig
from policies.omnijarvis.fsq import FSQ
from vla.backbone import Backbone
from vla.layers import AttentionReadout, DecoderBlock, RMSNorm, Rotary, default_ffn_dim


class BehaviorTokenizer(nn.Module):
    def __init__(self, config: OmniJarvisConfig):
        super().__init__()
        w = config.width
        self.pool = AttentionReadout(w, w)
        self.summary = nn.Parameter(torch.randn(config.n_codes, w) * 0.02)
        self.blocks = nn.ModuleList(
            DecoderBlock(w, config.heads, default_ffn_dim(w)) for _ in range(config.encoder_depth)
        )
        self.rotary = Rotary(w // config.heads, config.n_codes + config.chunk_length)
        self.norm = RMSNorm(w)
        self.fsq = FSQ(config.fsq_levels)
        self.to_latent = nn.Linear(w, self.fsq.dim)
        # Why a normalization before FSQ: when the decoder can act from the observation alone
        # (a scripted expert's demos), nothing asks the code to vary, the latent drifts into
        # tanh's flat tails and every window gets the same corner code, with zero gradient to
        # ever leave it (measured: one code for all windows by step 300 on lift). Centring and
        # scaling each latent dimension over the batch keeps codes spread and gradients alive.
        self.latent_norm = nn.BatchNorm1d(self.fsq.dim, affine=False) if config.latent_norm == "batch" else None

    def forward(self, backbone: Backbone, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor,
                valid: Tensor) -> Tensor:
        """``frames`` (B, C, ...), ``text`` (B, ...), ``state`` (B, C, D_s), ``valid`` (B, C) bool
        (False past the episode end) -> quantized codes (B, n_codes, d)."""
        b, c = state.shape[:2]
        per_frame = {k: v.flatten(0, 1)[:, None] for k, v in frames.items()}  # (B*C, 1, ...): one frame each
        per_text = {k: v.repeat_interleave(c, dim=0) for k, v in text.items()}
        prefix = backbone(per_frame, per_text, state.flatten(0, 1)[:, None])
        x = self.pool(prefix.tokens, prefix.mask).unflatten(0, (b, c))  # (B, C, D)
        x = torch.cat([self.summary.to(x.dtype).expand(b, -1, -1), x], dim=1)
        keys = torch.cat([torch.ones(b, self.summary.shape[0], dtype=torch.bool, device=valid.device), valid], dim=1)
        mask = keys[:, None, None, :]  # bidirectional; padded frames are never attended to
        for block in self.blocks:
            x = block(x, self.rotary, mask)
        z = self.to_latent(self.norm(x[:, : self.summary.shape[0]]))  # (B, n_codes, d)
        if self.latent_norm is not None:
            if self.latent_norm.training and z.shape[0] * z.shape[1] < 2:
                raise ValueError("latent_norm=batch needs at least 2 latents per batch: train.batch_size >= 2 "
                                 "(or policy.latent_norm=none)")
            z = self.latent_norm(z.flatten(0, 1)).view_as(z)
        return self.fsq(z)
