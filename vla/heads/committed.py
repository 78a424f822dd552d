"""Training-time real-time chunking (Black et al. 2025, arXiv 2512.05964): committed actions as input.

Inference-time RTC (:mod:`vla.heads.guidance`) steers an unchanged model toward the actions the
arm executes while the next chunk is computed. The training-time variant teaches the model to
take them as given instead: each training sample's first ``d`` actions (``d`` uniform in
``[0, max_delay]``, a simulated inference delay) enter the denoiser clean and flagged as
committed, and carry no loss. At run time the plan's first ``d`` actions go in the same way
(``deploy.rtc_method=condition``) and the chunk continues them, with no backward pass and no
extra cost.

    chunk positions   0 1 2 3 4 5 ... H-1
    committed (d=3)   1 1 1 0 0 0 ... 0      clean ground truth in, no loss
    denoised          . . . x x x ... x      noisy in, the usual loss
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_committed(batch: int, horizon: int, max_delay: int, device: torch.device | str) -> Tensor:
    """(B, H) bool: the first d_i positions of row i, d_i uniform in [0, max_delay]."""
    delays = torch.randint(0, max_delay + 1, (batch,), device=device)
    return torch.arange(horizon, device=device)[None] < delays[:, None]


def committed_from_weights(weights: Tensor, max_delay: int) -> Tensor:
    """(B, H) bool from a chunk prefix's (B, H) weights: the frozen actions (weight 1), at most the
    first ``max_delay`` of them (what the policy was trained to take; later ones it plans itself)."""
    horizon = weights.shape[-1]
    frozen = weights >= 1.0
    return frozen & (torch.arange(horizon, device=weights.device)[None] < max_delay)


def committed_plan(guide, max_delay: int) -> tuple[Tensor, Tensor]:
    """A chunk prefix (vla.heads.guidance.ActionPrefix, method ``condition``) -> the plan's actions
    (B, H, D_a) and the positions they commit (B, H) bool, for a policy trained with ``max_delay``."""
    if max_delay <= 0:
        raise ValueError("rtc_method=condition: this policy was not trained with committed actions "
                         "(train with policy.rtc_train_max_delay=<steps>)")
    return guide.actions, committed_from_weights(guide.weights, max_delay)


def flag_committed(tokens: Tensor, committed: Tensor | None, embed: Tensor) -> Tensor:
    """Action tokens (B, H, W) with the learned "committed" embedding (W,) added where ``committed`` (B, H)."""
    if committed is None:
        return tokens
    return tokens + committed[..., None].to(tokens.dtype) * embed


def no_loss(is_pad: Tensor | None, committed: Tensor | None) -> Tensor | None:
    """(B, H) positions without a loss: past the episode's end, or committed (they were given)."""
    if committed is None or is_pad is None:
        return committed if is_pad is None else is_pad
    return is_pad | committed


def put_committed(x: Tensor, actions: Tensor, committed: Tensor | None) -> Tensor:
    """``x`` (B, H, D) with the committed positions replaced by ``actions`` (B, H, D)."""
    if committed is None:
        return x
    return torch.where(committed[..., None], actions.to(x.dtype), x)
