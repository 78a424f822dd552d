"""The backbone interface every policy builds on.

A backbone has a **frozen-able feature half** and a **trainable token half**, so that frozen
work can be computed once per dataset frame and cached (CPU training stays fast):

    encode_frames(images)  one frame's images          -> frame features   {name: (N, ...)}
    encode_text(texts)     one instruction per sample   -> text features    {name: (N, ...)}
    forward(frames, text, state, embodiment=None)       -> Prefix(tokens (B, N_tok, D), mask (B, N_tok))

``frames`` carries the history axis: every tensor is ``(B, T, ...)`` with T = n_obs_steps.
A backbone implements the token half as ``encode_prefix`` (and ``num_content_tokens``); the
base class appends one learned embodiment token when the policy trains on a dataset mixture
(``embodiment`` (B,) long: each sample's entry; vla/data/mixture.py).
``text`` tensors are ``(B, ...)``. The embedded backbone returns
``frames["vision"]`` ``(N, n_cam, P, D_vis)``: per-frame visual embeddings, which is also what
a world-model policy (DUST) predicts for a future frame. A transformers VLM backbone (a
later addition) fits the same halves: its frozen half returns per-frame hidden states of the
VLM over that frame's images and the instruction, and its token half projects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from vla.backbone.config import BackboneConfig


@dataclass
class Prefix:
    """Conditioning tokens for a policy head."""

    tokens: Tensor  # (B, N, D)
    mask: Tensor    # (B, N) bool, True = a real token, False = padding


class Backbone(nn.Module, ABC):
    """Base class; see the module docstring for the contract."""

    config: BackboneConfig
    width: int
    # embodiment_embed: nn.Embedding, set by make_backbone for a mixture of > 1 embodiments (no class
    # attribute: it would shadow the registered module)

    @property
    def frozen(self) -> bool:
        """True when both encoders are frozen, i.e. frame and text features can be cached."""
        return self.config.freeze_vision and self.config.freeze_text

    @abstractmethod
    def frozen_modules(self) -> list[str]:
        """Names of submodules holding frozen pretrained weights (parameters and buffers),
        which checkpoints leave out because they are rebuilt from their source."""

    @abstractmethod
    def cache_key(self) -> str:
        """Identifies the frozen features (encoder + preprocessing) for the feature cache."""

    @abstractmethod
    def encode_frames(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images[camera]`` ``(N, 3, H, W)`` float in [0, 1] -> frame features ``(N, ...)``."""

    @abstractmethod
    def encode_text(self, texts: list[str]) -> dict[str, Tensor]:
        """N instructions -> text features ``(N, ...)``."""

    @abstractmethod
    def num_content_tokens(self, n_obs_steps: int) -> int:
        """Length of `encode_prefix`'s tokens for a history of ``n_obs_steps`` frames."""

    @abstractmethod
    def encode_prefix(self, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor | None,
                      camera_is_pad: Tensor | None = None) -> Prefix:
        """Frame features (B, T, ...), text features (B, ...), state (B, T, D_s) -> Prefix; the
        tokens of cameras a sample lacks (``camera_is_pad`` (B, n_cam)) are masked."""

    def _embodiment_embed(self) -> nn.Embedding | None:
        return self._modules.get("embodiment_embed")

    def num_tokens(self, n_obs_steps: int) -> int:
        """Prefix length N_tok for a history of ``n_obs_steps`` frames."""
        return self.num_content_tokens(n_obs_steps) + (self._embodiment_embed() is not None)

    def forward(self, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor | None,
                embodiment: Tensor | None = None, camera_is_pad: Tensor | None = None) -> Prefix:
        """`encode_prefix`, then the embodiment token of each sample (B,) when there is one."""
        prefix = self.encode_prefix(frames, text, state, camera_is_pad)
        embed = self._embodiment_embed()
        if embed is None:
            return prefix
        if embodiment is None:
            raise ValueError(f"this policy was trained on {embed.num_embeddings} embodiments "
                             f"and needs each sample's 'embodiment' index")
        token = embed(embodiment.to(prefix.tokens.device)).to(prefix.tokens.dtype)[:, None]
        mask = torch.ones(token.shape[0], 1, dtype=torch.bool, device=prefix.mask.device)
        return Prefix(torch.cat([prefix.tokens, token], dim=1), torch.cat([prefix.mask, mask], dim=1))

    # --- the visual embedding a world-model policy predicts (DUST) ---------------------------
    @property
    @abstractmethod
    def vision_feature_dim(self) -> int:
        """D_vis of the per-frame visual embedding ``frames["vision"]`` (N, n_cam, P, D_vis)."""

    def future_grid(self, pool: int) -> tuple[int, int, int]:
        """(n_cam, rows, cols) of :meth:`future_target` tokens: each camera's square patch grid
        (``vision_grid`` x ``vision_grid``) after ``pool`` x ``pool`` average pooling."""
        g = -(-self.config.vision_grid // pool)  # ceil: a 3x3 grid pools to 2x2, edge windows clipped
        return len(self.config.cameras), g, g

    def future_target(self, frames: dict[str, Tensor], pool: int) -> Tensor:
        """Frame features (N, ...) -> (N, n_cam * rows * cols, D_vis): the frozen per-frame visual
        embedding ``frames["vision"]`` average-pooled ``pool`` x ``pool`` over each camera's
        patch grid (DUST pools SigLIP's 16x16 grid 2x2 to 64 tokens)."""
        vision = frames["vision"].float()  # (N, n_cam, P, D)
        n, n_cam, p, d = vision.shape
        g = int(round(p**0.5))
        if g * g != p:
            raise ValueError(f"future_target needs a square patch grid per camera, got {p} patches")
        x = vision.reshape(n * n_cam, g, g, d).permute(0, 3, 1, 2)
        x = torch.nn.functional.avg_pool2d(x, pool, ceil_mode=True)  # (N*n_cam, D, g', g')
        return x.flatten(2).transpose(1, 2).reshape(n, -1, d)


_BACKBONES = {
    "embedded": "vla.backbone.embedded:EmbeddedBackbone",
    "vlm": "vla.backbone.vlm:VLMBackbone",
}


def make_backbone(cfg: BackboneConfig, *, width: int, n_obs_steps: int, state_dim: int,
                  n_embodiments: int = 0) -> Backbone:
    """Build the backbone named ``cfg.name``, projecting to ``width``; imported lazily. With
    ``n_embodiments`` > 1 (a dataset mixture) it appends a learned embodiment token."""
    import importlib

    if cfg.name not in _BACKBONES:
        raise ValueError(f"unknown backbone {cfg.name!r}; available: {sorted(_BACKBONES)}")
    module, cls = _BACKBONES[cfg.name].split(":")
    backbone = getattr(importlib.import_module(module), cls)(cfg, width=width, n_obs_steps=n_obs_steps,
                                                             state_dim=state_dim)
    if n_embodiments > 1:
        backbone.embodiment_embed = nn.Embedding(n_embodiments, width)
        nn.init.normal_(backbone.embodiment_embed.weight, std=0.02)
    return backbone


def flatten_frames(frames: dict[str, Tensor]) -> tuple[dict[str, Tensor], int, int]:
    """``(B, T, ...)`` -> ``(B*T, ...)``; returns the flat dict, B and T."""
    b, t = next(iter(frames.values())).shape[:2]
    return {k: v.flatten(0, 1) for k, v in frames.items()}, b, t


def camera_batch(images: dict[str, Tensor], cameras: list[str], size: int) -> tuple[Tensor, int, int]:
    """``images[camera]`` (N, 3, H, W) in [0, 1] -> (N * n_cam, 3, size, size) float32, camera
    minor, resized with antialiasing when needed; returns it, N and n_cam."""
    missing = [c for c in cameras if c not in images]
    if missing:
        raise KeyError(f"backbone needs camera(s) {missing}; got {sorted(images)}")
    x = torch.stack([images[c] for c in cameras], dim=1)  # (N, n_cam, 3, H, W)
    n, n_cam = x.shape[:2]
    x = x.flatten(0, 1).float()
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
    return x, n, n_cam


def camera_token_mask(camera_is_pad: Tensor | None, shape: tuple[int, int, int, int], device) -> Tensor:
    """(B, T * n_cam * P) bool, True = a real token, for visual tokens laid out (B, T, n_cam, P):
    False for every token of a camera the sample lacks (``camera_is_pad`` (B, n_cam))."""
    b, t, n_cam, p = shape
    if camera_is_pad is None:
        return torch.ones(b, t * n_cam * p, dtype=torch.bool, device=device)
    real = ~camera_is_pad.to(device=device, dtype=torch.bool)  # (B, n_cam)
    return real[:, None, :, None].expand(b, t, n_cam, p).reshape(b, -1)


def assert_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"non-finite values (NaN or inf) in {name!r}")
