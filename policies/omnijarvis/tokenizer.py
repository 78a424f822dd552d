"""The behavior tokenizer: a bidirectional transformer over a window of C frames -> FSQ codes.

Per frame, the shared backbone's prefix for that single observation (its visual, state and
instruction tokens) is pooled to one vector by learned attention queries (GROOT pools its
per-frame features by cross-attention too). ``n_codes`` learned summary tokens are prepended
to the C frame vectors, a bidirectional transformer runs over them, and each summary token is
projected to ``len(fsq_levels)`` dims, standardized per dimension (``latent_norm``, see
:class:`BatchRenorm`) and quantized. The encoder sees observations only, as
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


class BatchRenorm(nn.BatchNorm1d):
    """Batch Renormalization (Ioffe et al., 2017) without affine and without clipping: each
    latent dimension is standardized with the running statistics, in training as well, while
    the gradient is BatchNorm's.

    Why not plain ``nn.BatchNorm1d``: it normalizes a training batch with that batch's own mean
    and variance, so a window's code depends on which windows were drawn beside it, and stage 2
    and acting (running statistics) produce other codes than the ones the decoder was trained
    on. Why not the running statistics alone: the anti-collapse effect comes from BatchNorm's
    gradient, which cannot move the latent's mean or shrink its spread (the output is invariant
    to both); with detached statistics the encoder drifts ahead of them into FSQ's flat tails.
    Measured on 12 `lift` episodes, ~180 steps of the CPU recipe (batch 16, lr 1e-3):

        latent_norm          distinct codes, 100 windows   training code != eval code
        none                 1                             -
        running stats only   1                             0 / 128
        batch (BatchNorm)    55-57                         124 / 128
        renorm (this)        37-50                         0 / 128

    So the forward value is exactly ``(z - running_mean) / sqrt(running_var + eps)``, the same
    in stage 1, in stage 2's targets and at inference; the gradient is that of
    ``(z - mean_B) / std_B * r + d`` with ``r = std_B / std_run`` and ``d = (mean_B -
    mean_run) / std_run`` held constant. The statistics are updated after the batch is
    normalized (a plain average over the first ``1 / momentum`` batches, then an EMA), so no
    code depends on its own batch. Same buffers as ``nn.BatchNorm1d(affine=False)``
    (``running_mean``, ``running_var``, ``num_batches_tracked``): either kind's checkpoint loads
    into the other, and in eval mode both compute the same thing.
    """

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)

    def forward(self, z: Tensor) -> Tensor:
        """(N, d) -> (N, d)."""
        x = z.float()
        inv_run = torch.rsqrt(self.running_var + self.eps)
        out = (x - self.running_mean) * inv_run
        if not self.training:
            return out.to(z.dtype)
        mean_b, var_b = x.mean(0), x.var(0, unbiased=False)
        std_b = torch.sqrt(var_b + self.eps)
        bn = (x - mean_b) / std_b * (std_b.detach() * inv_run)  # BatchNorm's gradient, scaled by r
        out = out.detach() + (bn - bn.detach())  # the value: running statistics; the gradient: bn's
        with torch.no_grad():
            momentum = max(self.momentum, 1.0 / (1 + int(self.num_batches_tracked)))
            self.running_mean.lerp_(mean_b.detach(), momentum)
            self.running_var.lerp_(x.detach().var(0), momentum)  # unbiased, as BatchNorm's update
            self.num_batches_tracked.add_(1)
        return out.to(z.dtype)


def make_latent_norm(kind: str, dim: int) -> nn.Module | None:
    """The normalization before FSQ (``OmniJarvisConfig.latent_norm``)."""
    if kind == "renorm":
        return BatchRenorm(dim)
    if kind == "batch":
        return nn.BatchNorm1d(dim, affine=False)
    return None


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
        # scaling each latent dimension keeps codes spread and gradients alive; BatchRenorm does
        # it with BatchNorm's gradient but running statistics, so a code depends on its window only.
        self.latent_norm = make_latent_norm(config.latent_norm, self.fsq.dim)

    def forward(self, backbone: Backbone, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor,
                valid: Tensor, embodiment: Tensor | None = None, camera_is_pad: Tensor | None = None) -> Tensor:
        """``frames`` (B, C, ...), ``text`` (B, ...), ``state`` (B, C, D_s), ``valid`` (B, C) bool
        (False past the episode end), ``embodiment`` (B,) (a mixture's) -> quantized codes (B, n_codes, d)."""
        b, c = state.shape[:2]
        per_frame = {k: v.flatten(0, 1)[:, None] for k, v in frames.items()}  # (B*C, 1, ...): one frame each
        per_text = {k: v.repeat_interleave(c, dim=0) for k, v in text.items()}
        per_embodiment = None if embodiment is None else embodiment.repeat_interleave(c, dim=0)
        per_camera_pad = None if camera_is_pad is None else camera_is_pad.repeat_interleave(c, dim=0)
        prefix = backbone(per_frame, per_text, state.flatten(0, 1)[:, None], per_embodiment, per_camera_pad)
        x = self.pool(prefix.tokens, prefix.mask).unflatten(0, (b, c))  # (B, C, D)
        x = torch.cat([self.summary.to(x.dtype).expand(b, -1, -1), x], dim=1)
        keys = torch.cat([torch.ones(b, self.summary.shape[0], dtype=torch.bool, device=valid.device), valid], dim=1)
        mask = keys[:, None, None, :]  # bidirectional; padded frames are never attended to
        for block in self.blocks:
            x = block(x, self.rotary, mask)
        z = self.to_latent(self.norm(x[:, : self.summary.shape[0]]))  # (B, n_codes, d)
        if self.latent_norm is not None:
            if self.latent_norm.training and z.shape[0] * z.shape[1] < 2:
                raise ValueError("latent_norm needs at least 2 latents per training batch for its statistics: "
                                 "train.batch_size >= 2 (or policy.latent_norm=none)")
            z = self.latent_norm(z.flatten(0, 1)).view_as(z)
        return self.fsq(z)
