"""The backbone's settings: a plain dataclass (no torch), so configs compose where no model runs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackboneConfig:
    name: str = "embedded"             # registered backbone name (see make_backbone)
    cameras: list[str] = field(default_factory=lambda: ["agentview", "wrist"])
    image_size: int = 96               # frames are resized to (image_size, image_size)
    vision_grid: int = 3               # patch tokens per camera = vision_grid ** 2 (adaptive avg pool)
    keypoints: int = 32                # spatial-softmax keypoints per camera, one extra token; 0 = off
    max_text_tokens: int = 16          # instruction tokens kept (padded / truncated)
    use_state: bool = True             # one proprioception token per observed frame
    freeze_vision: bool = True         # frozen encoders are cached during training
    freeze_text: bool = True
    # name=vlm (vla/backbone/vlm.py): a transformers VLM
    model: str | None = None           # a local model directory or a hub id (SmolVLM / Idefics3, PaliGemma),
                                       # or the causal LM of a SigLIP pairing
    vision_model: str | None = None    # a SigLIP vision model to pair with the causal LM in `model`
    hidden_layer: int | None = None    # the LM layer whose output feeds the policy (1-based); None = the middle
    finetune: str = "frozen"           # the LM layers: frozen | lora | full
    lora_rank: int = 16
    dtype: str = "float32"             # the VLM's weights: float32 | bfloat16
    gradient_checkpointing: bool = False  # recompute LM activations in backward (lora / full)
