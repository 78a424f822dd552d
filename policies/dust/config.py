"""DUST configuration. Presets: ``configs/policy/dust-small.yaml`` and ``dust-base.yaml``.

Time convention: the toolkit's (t = 1 noise, t = 0 data; DUST's tau = 1 - t), see vla.heads.
The number of action denoising steps N_A is the shared ``noise.num_inference_steps``; the
vision stream takes N_o = ``vision_ratio`` * N_A finer steps (test-time scaling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.backbone.config import BackboneConfig
from vla.heads.config import NoiseProcessConfig
from vla.policy_config import PolicyConfig

CONDITIONING = ("cross_attention", "stream")
ACTION_UPDATE = ("end", "start")
TARGET_NORM = ("layer", "none")


@dataclass
class DustConfig(PolicyConfig):
    name: str = "dust"
    width: int = 256
    heads: int = 4
    ffn_dim: int = 0            # SwiGLU hidden size; 0 = 8/3 * width rounded to 64
    mmdit_depth: int = 4        # joint MM-DiT blocks (paper: 12)
    stream_depth: int = 2       # per-stream DiT blocks after them, per stream (paper: 4)
    # How the backbone's prefix tokens condition the streams. "cross_attention": every block
    # of both streams cross-attends to them (GR00T's way; the prefix keys / values are computed
    # once per chunk). "stream": they are a third MM-DiT stream in the joint attention, which
    # the paper leaves open; per-stream blocks then cross-attend to that stream's output.
    conditioning: str = "cross_attention"
    # Bidirectional self-attention blocks over the prefix before the streams read it, run once
    # per chunk (GR00T passes its VLM features through such a stack). The paper's prefix is a
    # VLM's layer-12 features, already contextual; the embedded backbone's tokens are not.
    prefix_depth: int = 0
    # The future-vision target: the frozen backbone's visual embedding of frame t + horizon,
    # average-pooled future_pool x future_pool over each camera's patch grid.
    future_pool: int = 2
    target_norm: str = "layer"  # "layer": per-token LayerNorm (no affine) of the target; "none"
    lambda_wm: float = 1.0      # L = L_action + lambda_wm * L_wm; 0 drops the vision stream entirely
    decoupled_noise: bool = True  # independent times for the two streams; False = one shared time
    vision_ratio: int = 1       # q: vision denoising steps per action step; N_o = q * N_A
    # Where in each block of q vision steps the action update happens: "end" uses the
    # velocity of the block's last pass (the finest vision estimate), "start" of its first.
    action_update: str = "end"
    # Video-only pretraining: no action feature is read, action tokens are pure noise
    # (t = 1) and only L_wm trains. Fine-tune afterwards with train.init_from=<checkpoint>.
    action_free: bool = False
    # Training: denoise each observation at K noise-time pairs that share one pass over the
    # prefix (its cross-attention keys / values), as Dita's noise_samples: K times the
    # denoising samples for a fraction of the compute.
    noise_samples: int = 1
    # GR00T's flow matching: Beta(1.5, 1) times with mass near the noise end, 4 Euler steps.
    noise: NoiseProcessConfig = field(
        default_factory=lambda: NoiseProcessConfig(kind="flow", num_inference_steps=4,
                                                   time_beta_alpha=1.5, time_beta_beta=1.0, time_scale=0.999)
    )
    # The state enters as tokens of the action stream, so the prefix leaves it out.
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(use_state=False))

    def validate(self) -> None:
        super().validate()
        for name, value, allowed in (("conditioning", self.conditioning, CONDITIONING),
                                     ("action_update", self.action_update, ACTION_UPDATE),
                                     ("target_norm", self.target_norm, TARGET_NORM)):
            if value not in allowed:
                raise ValueError(f"dust {name}={value!r}; choose from {list(allowed)}")
        if self.noise.kind != "flow":
            raise ValueError(f"dust is a flow-matching policy; noise.kind must be 'flow', got {self.noise.kind!r}")
        if self.vision_ratio < 1 or self.noise.num_inference_steps < 1 or self.noise_samples < 1:
            raise ValueError("vision_ratio, noise.num_inference_steps and noise_samples must be >= 1")
        if self.lambda_wm < 0:
            raise ValueError(f"lambda_wm must be >= 0, got {self.lambda_wm}")
        if self.action_free and self.lambda_wm == 0:
            raise ValueError("action_free trains only the world-model loss; it needs lambda_wm > 0")
        if self.prefix_depth < 0:
            raise ValueError(f"prefix_depth must be >= 0, got {self.prefix_depth}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def world_model(self) -> bool:
        return self.lambda_wm > 0

    def future_offsets(self) -> list[int]:
        return [self.horizon] if self.world_model else []

    def needs_actions(self) -> bool:
        return not self.action_free
