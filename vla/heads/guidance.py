"""Guided denoising toward a known part of the chunk: real-time chunking's sampler (RTC).

RTC (Black et al. 2025) conditions a chunk on the actions the previous plan executes while the
chunk is computed (:mod:`vla.chunking` builds them). At every denoising step it nudges the model's
output so that the clean chunk it implies agrees with them where the weights W say, with
pseudo-inverse guidance (PiGDM):

    x0_hat = x~ - s u(x~)                     the clean chunk the current velocity implies
    g      = (W * (Y - x0_hat))^T d x0_hat / d x~        one vector-Jacobian product through the model
    u'     = u - min(beta, s / ((1 - s) r^2)) g,   r^2 = s^2 / (s^2 + (1 - s)^2)

in flow terms (x~ = (1 - s) x0 + s eps, u = eps - x0; RTC writes tau = 1 - s and v = -u). A
diffusion head is sampled through the same formulas: its state is a scaled flow state
(:meth:`NoiseProcess.flow_time`), and the guided velocity goes back to an epsilon prediction.
beta caps the weight near pure noise (RTC uses 5).

The clean estimate is the one the sampler steps with: DDIM with ``clip_sample`` clamps it to the
actions' range, so guidance differentiates the clamped estimate (:meth:`NoiseProcess.clip_clean`).
Unclamped, an epsilon-prediction head's estimate at the first DDIM steps (alpha_bar ~ 1e-7) is its
error times 1 / sqrt(alpha_bar), and so is its Jacobian: on a small trained Dita the guided chunk
saturated (0% on `stack` at 200 ms). Clamped, the noisiest steps mostly fall outside the range and
are left alone, as the sampler leaves them.

``inpaint`` takes the Jacobian as the identity instead: the clean estimate is pulled toward the
plan directly, with no backward pass (the chunk costs what an unguided one does), but it ignores
what the model says: on `stack` at 200 ms it smoothed the commands and lost most successes
(docs/deploy.md). It is what LeRobot 0.6.1's RTC computes in effect: its velocity is evaluated
before ``x_t`` requires grad, so its correction's Jacobian is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vla.heads.base import NoiseProcess
from vla.chunking import METHODS


@dataclass
class ActionPrefix:
    """What a chunk is guided toward: ``actions`` (B, H, D_a) normalized, ``weights`` (B, H) in [0, 1];
    ``method``: ``guidance`` (RTC's, a vector-Jacobian product through the model per step),
    ``inpaint`` (the Jacobian taken as the identity: no backward pass), or ``condition`` (the
    frozen actions, weight 1, go in as committed actions: a policy trained for it, vla/heads/committed.py)."""

    actions: Tensor
    weights: Tensor
    max_guidance: float = 5.0
    method: str = "guidance"


def guidance_weight(s: float, max_guidance: float) -> float:
    """RTC's PiGDM weight at flow time ``s`` (1 = noise), capped at ``max_guidance``."""
    if s >= 1.0 or s <= 0.0:
        return max_guidance
    r2 = s * s / (s * s + (1 - s) ** 2)
    return min(max_guidance, s / ((1 - s) * r2))


def guided_output(process: NoiseProcess, x_t: Tensor, t: float, model: Callable[[Tensor], Tensor],
                  prefix: ActionPrefix) -> Tensor:
    """``model(x_t)``'s output at time ``t``, corrected toward ``prefix`` (same shape as x_t)."""
    s, c = process.flow_time(t)
    weight = guidance_weight(s, prefix.max_guidance)
    if prefix.method == "inpaint":
        # g = W (Y - x0_hat): the clean estimate moves s * weight of the way to the plan, at most all
        # of it (RTC's weights assume a Jacobian that is small near noise; the identity is not).
        out = model(x_t)
        u = process.to_velocity(x_t, out, t)
        error = (prefix.actions.to(u.dtype) - (x_t / c - s * u)) * prefix.weights.to(u.dtype)[..., None]
        return process.from_velocity(x_t, u - min(weight, 1.0 / s) * error, t)
    if prefix.method != "guidance":
        raise ValueError(f"unknown guidance method {prefix.method!r}; expected one of {list(METHODS)}")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        u = process.to_velocity(x, model(x), t)
        # the clean estimate the sampler steps with: DDIM clamps it to the actions' range, and so
        # does its Jacobian (zero where it clamps). Unclamped, an epsilon head's estimate at the
        # noisiest steps is model error times 1 / sqrt(alpha_bar) ~ 2,000, and its Jacobian saturated
        # the guided chunks of a trained Dita (0% on stack at 200 ms, before this clamp).
        x0 = process.clip_clean(x / c - s * u)
        error = (prefix.actions.to(x0.dtype) - x0) * prefix.weights.to(x0.dtype)[..., None]
        (grad,) = torch.autograd.grad(x0, x, error)
    # d/dx~ = c * d/dx_t, since x_t = c x~
    return process.from_velocity(x_t, u.detach() - weight * c * grad, t)
