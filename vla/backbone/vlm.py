"""A transformers vision-language model behind the shared backbone interface (``backbone.name=vlm``).

    policy.backbone.name=vlm policy.backbone.model=HuggingFaceTB/SmolVLM-256M-Instruct   (or a local dir)

Families read here: SmolVLM / Idefics3, PaliGemma and Qwen2.5-VL (``config.model_type``
decides; Qwen2.5-VL's images are ``backbone.image_size`` rounded up to its 28-pixel unit), and a
pairing of a SigLIP vision tower (``backbone.vision_model``) with any causal LM
(``backbone.model``: Llama, Qwen2, Gemma, SmolLM, ...) joined by a learned connector. The model
is split into the two halves of the `Backbone` contract:

    encode_frames  the vision tower + connector, per camera image   -> {"vision": (N, n_cam, P, D_lm)}
    encode_text    the LM's token embeddings of the instruction     -> {"text": (N, L, D_lm), "text_mask"}
    forward        [image tokens of T frames | text tokens] through the LM's first ``hidden_layer``
                   layers (the rest are dropped at load time: GR00T and DUST read a middle layer),
                   projected to the policy width, + one state token per frame -> Prefix

so with a frozen vision tower and embeddings (the default) the per-frame features are cached for
training like the embedded backbone's, and only the truncated LM runs per step. The LM layers are
``frozen`` (only the projections train), ``lora`` (peft adapters on the attention projections) or
``full``. Images are resized to the vision tower's size and normalized with the model's image
processor statistics when the model directory has them (0.5 / 0.5, SigLIP's, otherwise); the
model's chat template and image-splitting are not used: every camera image is one tile.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from vla.backbone.base import Backbone, BackboneConfig, Prefix, camera_batch, camera_token_mask
from vla.errors import ConfigError

FAMILIES = ("idefics3", "smolvlm", "paligemma", "qwen2_5_vl")
# Qwen2.5-VL's processor normalizes with CLIP's statistics (the others with SigLIP's 0.5 / 0.5).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
FINETUNE_MODES = ("frozen", "lora", "full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def load_vlm(source: str, dtype: torch.dtype):
    """(model, tokenizer, image mean, image std) from a local directory or hub id (hub only
    when online: HF_HUB_OFFLINE=1 keeps it to the local cache)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the VLM {source!r} (a local directory, or a hub id when online): "
                         f"{' '.join(str(e).split())[:200]}") from None
    default = (CLIP_MEAN, CLIP_STD) if model.config.model_type == "qwen2_5_vl" else None
    return model, tokenizer, *image_stats(source, default)


def load_pairing(vision_source: str, lm_source: str, dtype: torch.dtype):
    """(SigLIP vision model, causal LM, tokenizer, image mean, image std) for a vision tower and a
    language model that were not trained together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel

    try:
        vision = SiglipVisionModel.from_pretrained(vision_source, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the SigLIP vision model {vision_source!r}: "
                          f"{' '.join(str(e).split())[:200]}") from None
    try:
        lm = AutoModelForCausalLM.from_pretrained(lm_source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(lm_source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the language model {lm_source!r}: {' '.join(str(e).split())[:200]}") from None
    mean, std = image_stats(vision_source)
    return vision, lm, tokenizer, mean, std


def image_stats(source: str, default: tuple | None = None) -> tuple[list[float], list[float]]:
    """The image processor's normalization from a model directory, else `default` (SigLIP's 0.5 / 0.5)."""
    mean, std = default or ([0.5] * 3, [0.5] * 3)
    processor = Path(source) / "preprocessor_config.json"
    if processor.is_file():
        stats = json.loads(processor.read_text())
        mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
    return mean, std


class VisionTower(nn.Module):
    """A family's vision encoder (+ its pretrained connector): (N, 3, S, S) normalized -> (N, P, D)."""

    def __init__(self, family: str, inner: nn.Module):
        super().__init__()
        self.family = family
        self.connector = None
        if family == "paligemma":
            self.encoder, self.connector = inner.vision_tower, inner.multi_modal_projector
        elif family == "siglip":  # a bare SigLIP: no pretrained connector (the backbone learns one)
            self.encoder = inner
        elif family == "qwen2_5_vl":  # its patch merger, the connector, lives inside the tower
            self.encoder = inner.visual
        else:  # idefics3 / smolvlm
            self.encoder, self.connector = inner.vision_model, inner.connector
        self.pretrained_connector = family != "siglip"

    def forward(self, x: Tensor) -> Tensor:
        if self.family == "siglip":
            return self.encoder(pixel_values=x).last_hidden_state
        if self.family == "qwen2_5_vl":
            patches, grid = qwen_patches(x, self.encoder.config)
            merged = self.encoder(patches, grid_thw=grid).pooler_output  # (N * P, D_lm)
            return merged.reshape(x.shape[0], -1, merged.shape[-1])
        if self.family == "paligemma":
            return self.connector(self.encoder(x).last_hidden_state)
        # Idefics3's own get_image_features drops all-black images as padding: call the parts.
        n, _, h, w = x.shape
        full = torch.ones(n, h // self.patch_size, w // self.patch_size, dtype=torch.bool, device=x.device)
        return self.connector(self.encoder(pixel_values=x, patch_attention_mask=full).last_hidden_state)

    @property
    def patch_size(self) -> int:
        return self.encoder.config.patch_size

    def image_size(self, wanted: int) -> int:
        """The side images are resized to: the tower's own, or (Qwen2.5-VL, any size) `wanted`
        rounded up to a whole number of merged patches."""
        size = getattr(self.encoder.config, "image_size", None)
        if size is not None:
            return size
        unit = self.encoder.config.patch_size * self.encoder.config.spatial_merge_size
        return -(-wanted // unit) * unit


def qwen_patches(x: Tensor, config) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) normalized images -> Qwen2.5-VL's flattened patches (N * S/p * S/p, 3 * t * p * p)
    and grid_thw (N, 3), in its image processor's order: one frame repeated over the temporal
    patch, patches grouped by the 2 x 2 blocks the merger joins."""
    n, c, h, w = x.shape
    p, m, t = config.patch_size, config.spatial_merge_size, config.temporal_patch_size
    gh, gw = h // p, w // p
    x = x.unsqueeze(1).expand(n, t, c, h, w)
    x = x.reshape(n, t, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    grid = torch.tensor([[1, gh, gw]] * n, device=x.device)
    return x.reshape(n * gh * gw, c * t * p * p), grid


class VLMBackbone(Backbone):
    """Prefix layout (N_tok = T * n_cam * P + L + T_state):
        [frame 0: cam 0 image tokens, cam 1 ... | frame 1: ... | instruction tokens (L) | state tokens (T)]
    All but the state tokens are the LM's hidden states at ``hidden_layer``, projected to ``width``.
    """

    def __init__(self, cfg: BackboneConfig, *, width: int, n_obs_steps: int, state_dim: int):
        super().__init__()
        self.config, self.width, self.n_obs_steps, self.state_dim = cfg, width, n_obs_steps, state_dim
        if cfg.finetune not in FINETUNE_MODES:
            raise ConfigError(f"backbone.finetune must be one of {list(FINETUNE_MODES)}, got {cfg.finetune!r}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if cfg.dtype not in dtypes:
            raise ConfigError(f"backbone.dtype must be one of {list(dtypes)}, got {cfg.dtype!r}")
        dtype = dtypes[cfg.dtype]
        if not cfg.model:
            raise ConfigError("backbone.name=vlm needs backbone.model: a local model directory or a hub id")
        if cfg.vision_model:  # a SigLIP tower + a causal LM, joined by a learned connector
            vision, causal_lm, self.tokenizer, mean, std = load_pairing(cfg.vision_model, cfg.model, dtype)
            self.family = f"siglip+{causal_lm.config.model_type}"
            self.vision = VisionTower("siglip", vision)
            lm = causal_lm.model
        else:
            model, self.tokenizer, mean, std = load_vlm(cfg.model, dtype)
            self.family = model.config.model_type
            if self.family not in FAMILIES:
                raise ConfigError(f"VLM family {self.family!r} is not supported by backbone.name=vlm; supported: "
                                  f"{list(FAMILIES)}, or a SigLIP + causal LM pairing (backbone.vision_model)")
            self.vision = VisionTower(self.family, model.model)
            lm = model.model.text_model if self.family in ("idefics3", "smolvlm") else model.model.language_model
        self.embed = lm.embed_tokens
        lm.embed_tokens = None  # the LM runs on inputs_embeds; the table lives in self.embed
        n_layers = len(lm.layers)
        self.hidden_layer = cfg.hidden_layer if cfg.hidden_layer is not None else n_layers // 2
        if not 1 <= self.hidden_layer <= n_layers:
            raise ConfigError(f"backbone.hidden_layer must be in 1..{n_layers} for this model, got {cfg.hidden_layer}")
        lm.layers = lm.layers[: self.hidden_layer]  # the layers above the one read are never run
        self.lm = lm
        self.image_size = self.vision.image_size(cfg.image_size)
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = self.vision(torch.zeros(1, 3, self.image_size, self.image_size, dtype=dtype))
        self.tokens_per_image, self.feature_dim = probe.shape[1], probe.shape[2]
        self.lm_dim = self.embed.weight.shape[1]
        # A pairing's vision features are not in the LM's space yet: a learned connector maps them
        # (after the cache, so the frozen tower's features are still computed once).
        self.connector = None if self.vision.pretrained_connector else nn.Sequential(
            nn.LayerNorm(self.feature_dim), nn.Linear(self.feature_dim, self.lm_dim))

        self.vision.requires_grad_(not cfg.freeze_vision)
        self.embed.requires_grad_(not cfg.freeze_text)
        self.lm.requires_grad_(cfg.finetune == "full")
        if cfg.finetune == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                               target_modules=LORA_TARGETS), self.lm)
        if cfg.gradient_checkpointing and cfg.finetune != "frozen":
            # non-reentrant: gradients reach the adapters whether or not the inputs require grad
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        n_cam = len(cfg.cameras)
        self.proj = nn.Sequential(nn.LayerNorm(self.lm_dim), nn.Linear(self.lm_dim, width))
        # Where an image token came from: which camera, which history frame (the LM sees one flat sequence).
        self.camera_embed = nn.Parameter(torch.zeros(n_cam, 1, self.lm_dim, dtype=dtype))
        self.frame_embed = nn.Parameter(torch.zeros(n_obs_steps, 1, 1, self.lm_dim, dtype=dtype))
        nn.init.normal_(self.camera_embed, std=0.02)
        nn.init.normal_(self.frame_embed, std=0.02)
        self.state_proj = nn.Linear(state_dim, width) if cfg.use_state else None
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        # The vision tower's features are cached in eval mode, so it stays there; a frozen LM too.
        # A LoRA / fully fine-tuned LM trains in train mode (its config's dropout, usually none,
        # and gradient checkpointing, which transformers applies only in train mode).
        self.vision.eval()
        self.lm.train(mode and self.config.finetune != "frozen")
        return self

    # ----------------------------------------------------------------------- contract
    def frozen_modules(self) -> list[str]:
        c = self.config
        return [name for name, frozen in (("vision", c.freeze_vision), ("embed", c.freeze_text),
                                          ("lm", c.finetune == "frozen")) if frozen]

    def cache_key(self) -> str:
        c = self.config
        desc = f"vlm|{c.vision_model}|{c.model}|{c.dtype}|{self.image_size}|{c.max_text_tokens}|{','.join(c.cameras)}"
        return hashlib.sha1(desc.encode()).hexdigest()[:12]

    @property
    def vision_feature_dim(self) -> int:
        return self.feature_dim

    def future_grid(self, pool: int) -> tuple[int, int, int]:
        g = int(round(self.tokens_per_image**0.5))
        g = -(-g // pool)
        return len(self.config.cameras), g, g

    def num_content_tokens(self, n_obs_steps: int) -> int:
        c = self.config
        return n_obs_steps * len(c.cameras) * self.tokens_per_image + c.max_text_tokens + \
            (n_obs_steps if c.use_state else 0)

    def encode_frames(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images[cam]`` (N, 3, H, W) in [0, 1] -> ``{"vision": (N, n_cam, P, D)}`` (D_lm for a VLM,
        SigLIP's width for a pairing)."""
        x, n, n_cam = camera_batch(images, self.config.cameras, self.image_size)
        x = ((x - self.image_mean) / self.image_std).to(self.embed.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            tokens = self.vision(x)  # (N * n_cam, P, D_lm)
        return {"vision": tokens.reshape(n, n_cam, *tokens.shape[1:])}

    def encode_text(self, texts: list[str]) -> dict[str, Tensor]:
        """N strings -> ``{"text": (N, L, D_lm) token embeddings, "text_mask": (N, L) bool}``."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.config.max_text_tokens, return_tensors="pt")
        device = self.embed.weight.device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text):
            out = self.embed(enc["input_ids"].to(device))
        return {"text": out, "text_mask": enc["attention_mask"].bool().to(device)}

    def encode_prefix(self, frames: dict[str, Tensor], text: dict[str, Tensor], state: Tensor | None,
                      camera_is_pad: Tensor | None = None) -> Prefix:
        vision = frames["vision"]  # (B, T, n_cam, P, D): D_lm, or a pairing's D_vis before its connector
        b, t = vision.shape[:2]
        dtype = self.camera_embed.dtype
        if self.connector is not None:
            vision = self.connector(vision.float())
        grid = tuple(vision.shape[:4])  # (B, T, n_cam, P)
        images = (vision.to(dtype) + self.camera_embed + self.frame_embed[:t]).flatten(1, 3)
        words = text["text"].to(dtype)
        sequence = torch.cat([images, words], dim=1)
        mask = torch.cat([camera_token_mask(camera_is_pad, grid, images.device), text["text_mask"].bool()], dim=1)
        hidden = self.lm(inputs_embeds=sequence, attention_mask=mask.long()).last_hidden_state
        parts, masks = [self.proj(hidden.float())], [mask]
        if self.state_proj is not None:
            if state is None:
                raise ValueError("this backbone was configured with use_state=True but got no observation.state")
            parts.append(self.state_proj(state.float()))
            masks.append(torch.ones(b, t, dtype=torch.bool, device=images.device))
        return Prefix(tokens=torch.cat(parts, dim=1), mask=torch.cat(masks, dim=1))
