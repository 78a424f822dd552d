"""The policy decoder: actions from the observation, the behavior code and the step within it.

A causal transformer over

    [ prefix tokens (N_p) | code tokens (n_codes) | step token | suffix ]

where the prefix is the shared backbone's tokens for the current observation history, the
code tokens embed the FSQ code of the behavior being executed, and the step token says how
many control steps ago the behavior began (0 .. C-1), the position GROOT's recurrent decoder
keeps in its memory. The suffix depends on the head:

- ``flow`` (default): a time token and H noisy action tokens; the velocity is read off the
  action positions and sampled with the shared flow-matching process.
- ``categorical``: H query tokens; each reads logits over ``action_bins`` bins per action
  dimension of the min-max normalized action in [-1, 1] (OmniJARVIS's decoder is categorical).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.omnijarvis.config import OmniJarvisConfig
from vla.backbone import Prefix
from vla.heads import make_noise_process, sinusoidal_embedding
from vla.layers import DecoderBlock, RMSNorm, Rotary, causal_mask, default_ffn_dim
from vla.policy import mask_dims


class BehaviorDecoder(nn.Module):
    def __init__(self, config: OmniJarvisConfig, n_prefix: int):
        super().__init__()
        w, h, d_a = config.width, config.horizon, config.action_dim
        self.config = config
        self.code_in = nn.Linear(len(config.fsq_levels), w)
        self.code_pos = nn.Parameter(torch.randn(config.n_codes, w) * 0.02)
        self.step_embed = nn.Embedding(config.chunk_length, w)
        self.blocks = nn.ModuleList(DecoderBlock(w, config.heads, default_ffn_dim(w))
                                    for _ in range(config.decoder_depth))
        self.norm = RMSNorm(w)
        self.flow = config.decoder_head == "flow"
        if self.flow:
            self.process = make_noise_process(config.noise)
            self.action_in = nn.Linear(d_a, w)
            self.action_out = nn.Linear(w, d_a)
        else:
            self.queries = nn.Parameter(torch.randn(h, w) * 0.02)
            self.action_out = nn.Linear(w, d_a * config.action_bins)
        n_suffix = h + (1 if self.flow else 0)
        self.rotary = Rotary(w // config.heads, n_prefix + config.n_codes + 1 + n_suffix)

    def _run(self, prefix: Prefix, codes: Tensor, step: Tensor, suffix: Tensor) -> Tensor:
        """Hidden states of the last H positions, (B, H, D)."""
        cond = torch.cat([self.code_in(codes.to(prefix.tokens.dtype)) + self.code_pos,
                          self.step_embed(step)[:, None]], 1)
        x = torch.cat([prefix.tokens, cond, suffix], dim=1)
        ones = torch.ones(x.shape[0], cond.shape[1] + suffix.shape[1], dtype=torch.bool, device=x.device)
        mask = causal_mask(torch.cat([prefix.mask, ones], dim=1))
        for block in self.blocks:
            x = block(x, self.rotary, mask)
        return self.norm(x[:, -self.config.horizon:])

    def _flow_suffix(self, noisy: Tensor, t: Tensor) -> Tensor:
        time = sinusoidal_embedding(self.process.model_time(t), self.config.width).to(noisy.dtype)
        return torch.cat([time[:, None], self.action_in(noisy)], dim=1)

    def _bins(self, h: Tensor) -> Tensor:
        return self.action_out(h).unflatten(-1, (self.config.action_dim, self.config.action_bins))  # (B, H, D_a, K)

    def loss(self, prefix: Prefix, codes: Tensor, step: Tensor, actions: Tensor, is_pad: Tensor | None,
             dim_is_pad: Tensor | None = None) -> Tensor:
        """Behavior-cloning loss of the H-step chunk ``actions`` (B, H, D_a); padded steps (B, H)
        and a mixture entry's padded action dimensions ``dim_is_pad`` (B, D_a) ignored."""
        valid = torch.ones(actions.shape, device=actions.device)
        if is_pad is not None:
            valid = valid * (~is_pad).float()[:, :, None]
        if dim_is_pad is not None:
            valid = valid * (~dim_is_pad).float()[:, None, :]
        if self.flow:
            keep = None if dim_is_pad is None else (~dim_is_pad)[:, None, :].float()  # padded dims stay 0
            noise = mask_dims(torch.randn_like(actions), keep)
            t = self.process.sample_time(actions.shape[0], actions.device)
            pred = self.action_out(self._run(prefix, codes, step,
                                             self._flow_suffix(self.process.add_noise(actions, noise, t), t)))
            err = (mask_dims(pred, keep) - self.process.target(actions, noise, t)).pow(2)  # (B, H, D_a)
        else:
            logits = self._bins(self._run(prefix, codes, step, self.queries.expand(actions.shape[0], -1, -1)))
            err = F.cross_entropy(logits.flatten(0, 2), self.bin_of(actions).flatten(), reduction="none")
            err = err.view(actions.shape)
        return (err * valid).sum() / valid.sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(self, prefix: Prefix, codes: Tensor, step: Tensor, noise: Tensor | None = None,
               keep: Tensor | None = None) -> Tensor:
        """(B, H, D_a) normalized actions; ``noise`` fixes the flow sampler's start; ``keep``
        (B, 1, D_a) zeroes a mixture embodiment's padded dims (`vla.policy.action_dims_kept`)."""
        b, cfg = codes.shape[0], self.config
        if not self.flow:
            hidden = self._run(prefix, codes, step, self.queries.expand(b, -1, -1))
            return self.bin_center(self._bins(hidden).argmax(-1))
        x = noise if noise is not None else torch.randn(b, cfg.horizon, cfg.action_dim, device=codes.device)
        x = mask_dims(x.to(prefix.tokens.dtype), keep)
        times = self.process.sampling_times()
        for t, t_next in zip(times[:-1], times[1:]):
            tt = torch.full((b,), t, device=x.device)
            velocity = mask_dims(self.action_out(self._run(prefix, codes, step, self._flow_suffix(x, tt))), keep)
            x = self.process.step(x, velocity, t, t_next)
        return x

    def bin_of(self, actions: Tensor) -> Tensor:
        k = self.config.action_bins
        return ((actions.clamp(-1, 1) + 1) / 2 * k).long().clamp(0, k - 1)

    def bin_center(self, bins: Tensor) -> Tensor:
        return (bins.float() + 0.5) / self.config.action_bins * 2 - 1
