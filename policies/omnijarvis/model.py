"""OmniJARVIS-style behavior-token policy on the shared backbone (see config.py for the stages).

Training sample (both stages): a window of C frames starting at frame s, with T_o - 1 frames
of history before it. Indices below are into that (T_o - 1 + C)-frame axis.

- stage ``tokenizer``: the encoder turns frames s .. s+C-1 into a code z; for
  ``decoder_samples`` random steps j of the window, the decoder predicts actions
  s+j .. s+j+H-1 from the history at s+j, z and j; the loss is the decoder's, end to end.
- stage ``vla``: z comes from the frozen encoder (the dataset's trajectories tokenized on
  the fly: the encoder is deterministic, so this equals a pre-pass over the dataset), the
  thought is the phase label at s, the memory the labels at s-N, s-2N, ...; the LM learns
  thought and behavior tokens given instruction, memory and the observation at s.

Acting: every N = ``replan_every`` control steps (per env, counted by the runtime's
``step``), the VLA generates a thought and a behavior; between re-plans the decoder turns the
held code, the current observation and the step within the behavior into action chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policies.omnijarvis.config import OmniJarvisConfig
from policies.omnijarvis.decoder import BehaviorDecoder
from policies.omnijarvis.tokenizer import BehaviorTokenizer
from vla.errors import CheckpointError, TrainingError
from vla.features import ACTION, ACTION_DIM_PAD, CAMERA_PAD, EMBODIMENT, OBS_STATE, PHASE, TASK
from vla.policy import Policy, action_dims_kept


@dataclass
class PlanState:
    """What each env is doing while acting (B envs): the behavior it follows and since when, the
    thought that chose it, and the thoughts of its earlier behaviors (the memory the next plan
    is conditioned on). Reset per env when its episode starts (step 0)."""
    start: Tensor                          # (B,) the control step each env's current behavior began
    thought: list[str]                     # B thoughts, "" where none was generated
    memory: list[list[str]]                # B lists of earlier thoughts, oldest first
    code: Tensor | None = None             # (B, n_codes, code_dim) the behavior codes; None before the first plan


class OmniJarvisPolicy(Policy):
    config_class = OmniJarvisConfig

    def __init__(self, config: OmniJarvisConfig):
        if config.env_state_weight > 0:
            raise ValueError("omnijarvis does not support env_state_weight (its windows have no single newest frame)")
        super().__init__(config, width=config.width)
        # the current batch's cameras-a-dataset-lacks mask (B, n_cam), set by _window for the prefixes
        # its windows build (the tokenizer's, the history's); None: every camera is real
        self._camera_pad: torch.Tensor | None = None
        n_prefix = self.backbone.num_tokens(config.n_obs_steps)
        self.behavior_tokenizer = BehaviorTokenizer(config)
        self.decoder = BehaviorDecoder(config, n_prefix)
        # Set by stage-1 training and saved with it: stage 2 refuses an untrained tokenizer.
        self.register_buffer("tokenizer_trained", torch.zeros((), dtype=torch.bool))
        self.vla = None
        if config.stage == "vla":
            from policies.omnijarvis.vla import BehaviorVLA

            for part in (self.backbone, self.behavior_tokenizer, self.decoder):
                part.requires_grad_(False)
            self.vla = BehaviorVLA(config, n_prefix)
        self._plans: PlanState | None = None  # per-env plan state while acting

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vla is not None:  # stage 2: the stage-1 parts are frozen, batch statistics included
            self.behavior_tokenizer.eval()
            self.decoder.eval()
        return self

    # --- windows --------------------------------------------------------------------------------
    def _window(self, batch: dict) -> tuple[dict, dict, Tensor, Tensor]:
        """Frame features (B, T_o-1+C, ...), text features, normalized state, valid (B, C).

        The text features are emptied: the encoder, the decoder and the VLA's observation
        tokens see images and state only. As in OmniJARVIS (e(o_1:T), pi(a | o, z)), the
        instruction reaches behavior through the code the VLA picks, which is what makes a
        code worth choosing; and per-frame encoding skips the instruction tokens C times over."""
        frames, text = self.encode_observation(batch)
        text = without_text(text)
        self._camera_pad = batch.get(CAMERA_PAD)  # (B, n_cam): cameras a dataset lacks, masked in every prefix
        state = batch[OBS_STATE]
        pad = batch.get(f"{OBS_STATE}_is_pad")
        valid = torch.ones(state.shape[:2], dtype=torch.bool, device=state.device) if pad is None else ~pad
        return frames, text, state, valid[:, self.config.n_obs_steps - 1:]

    def _encode(self, frames: dict, text: dict, state: Tensor, valid: Tensor,
                embodiment: Tensor | None = None) -> Tensor:
        """Codes (B, n_codes, d) of the window frames s .. s+C-1."""
        h = self.config.n_obs_steps - 1
        window = {k: v[:, h:] for k, v in frames.items()}
        return self.behavior_tokenizer(self.backbone, window, text, state[:, h:], valid, embodiment,
                                       self._camera_pad)

    def _history_prefix(self, frames: dict, text: dict, state: Tensor, j: Tensor, embodiment: Tensor | None = None):
        """Backbone prefix of the T_o-frame history ending at window step j (B,)."""
        rows, idx = steps_from(j, self.config.n_obs_steps)
        return self.backbone({k: v[rows, idx] for k, v in frames.items()}, text, state[rows, idx], embodiment,
                             self._camera_pad)

    def _replan_prefix(self, frames: dict, text: dict, state: Tensor, embodiment: Tensor | None):
        """The prefix the VLA chooses a behavior from: the history ending at the window's first frame,
        where a re-plan happens (training and ``choose_behavior`` alike)."""
        first = torch.zeros(len(state), dtype=torch.long, device=state.device)
        return self._history_prefix(frames, text, state, first, embodiment)

    # --- the contract ---------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        frames, text, state, valid = self._window(batch)
        if self.vla is None:
            return self._tokenizer_loss(batch, frames, text, state, valid)
        if not bool(self.tokenizer_trained):

            raise TrainingError("stage 'vla' needs a trained behavior tokenizer: start from the stage-1 run with "
                             "train.init_from=<stage-1 output_dir or checkpoint>")
        embodiment = batch.get(EMBODIMENT)
        with torch.no_grad():
            codes = self._encode(frames, text, state, valid, embodiment)
        prefix = self._replan_prefix(frames, text, state, embodiment)
        memories, thoughts = window_memories(batch)
        digits = self.behavior_tokenizer.fsq.codes_to_digits(codes)
        loss, logs = self.vla.loss(self.vla.training_sequence(batch[TASK], memories, prefix, thoughts, digits))
        return loss, {"loss": loss.item(), **logs}

    def _tokenizer_loss(self, batch, frames, text, state, valid) -> tuple[Tensor, dict[str, float]]:
        self.tokenizer_trained.fill_(True)
        embodiment = batch.get(EMBODIMENT)
        codes = self._encode(frames, text, state, valid, embodiment)
        cfg, b = self.config, len(codes)
        actions, pad = batch[ACTION], batch.get(f"{ACTION}_is_pad")
        dim_pad = batch.get(ACTION_DIM_PAD)  # a mixture's embodiments with fewer action dims
        losses = []
        for _ in range(cfg.decoder_samples):
            # a step of the window inside the episode (frame s is always inside)
            j = (torch.rand(b, device=codes.device) * valid.sum(1)).long()
            rows, idx = steps_from(j, cfg.horizon)
            prefix = self._history_prefix(frames, text, state, j, embodiment)
            losses.append(self.decoder.loss(prefix, codes, j, actions[rows, idx],
                                            None if pad is None else pad[rows, idx], dim_pad))
        loss = torch.stack(losses).mean()
        used = self.behavior_tokenizer.fsq.codes_to_indices(codes.detach()).unique().numel()
        return loss, {"loss": loss.item(), "action_loss": loss.item(), "codes_in_batch": float(used)}

    @torch.no_grad()
    def encode_behavior(self, batch: dict) -> Tensor:
        """FSQ code indices (B, n_codes) of the windows in a training batch (tokenizing a dataset)."""
        return self.behavior_tokenizer.fsq.codes_to_indices(self._encode(*self._window(batch), batch.get(EMBODIMENT)))

    @torch.no_grad()
    def reconstruct(self, batch: dict, j: Tensor, noise: Tensor | None = None,
                    codes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded chunk at window step j (B,) from ``codes`` (B, n_codes, d), by default the
        window's own: (pred, target, is_pad)."""
        frames, text, state, valid = self._window(batch)
        embodiment = batch.get(EMBODIMENT)
        if codes is None:
            codes = self._encode(frames, text, state, valid, embodiment)
        rows, idx = steps_from(j, self.config.horizon)
        pred = self.decoder.sample(self._history_prefix(frames, text, state, j, embodiment), codes, j, noise,
                                   action_dims_kept(batch))
        pad = batch.get(f"{ACTION}_is_pad")
        return pred, batch[ACTION][rows, idx], (torch.zeros_like(idx, dtype=torch.bool) if pad is None
                                                else pad[rows, idx])

    @torch.no_grad()
    def choose_behavior(self, batch: dict) -> Tensor:
        """The codes (B, n_codes, d) the VLA generates for each window of a training batch, as a
        re-plan at the window's first frame would: from its instruction, the memory of the phases
        before it, and the observation history ending there (greedy or sampled, as configured)."""
        if self.vla is None:
            raise CheckpointError("this is a stage-1 (tokenizer) checkpoint: it has no VLA to choose behaviors")
        frames, text, state, _ = self._window(batch)
        prefix = self._replan_prefix(frames, text, state, batch.get(EMBODIMENT))
        out = self.vla.generate(batch[TASK], window_memories(batch)[0], prefix)
        return self.behavior_tokenizer.fsq.digits_to_codes(out.digits).to(prefix.tokens.dtype)

    @torch.no_grad()
    def sample_actions(self, obs: dict, noise: Tensor | None = None) -> Tensor:
        """Observation (with ``step`` (B,) from the runtime; without it every call re-plans)
        -> (B, H, D_a). Re-plans the envs whose behavior is N steps old or whose episode
        just began, then decodes every env's chunk at its step within its behavior."""
        if self.vla is None:
            raise CheckpointError("this is a stage-1 (tokenizer) checkpoint: it has no VLA to choose behaviors; "
                                  "train stage 2 with policy.stage=vla train.init_from=<this run>")
        frames, text = self.encode_observation(obs)
        prefix = self.backbone(frames, without_text(text), obs[OBS_STATE], obs.get(EMBODIMENT), obs.get(CAMERA_PAD))
        b = prefix.tokens.shape[0]
        step = obs.get("step")
        step = torch.zeros(b, dtype=torch.long, device=prefix.tokens.device) if step is None else step.long()
        plans = self._plans
        if plans is None or len(plans.thought) != b:
            plans = self._plans = PlanState(start=torch.zeros_like(step), thought=[""] * b,
                                            memory=[[] for _ in range(b)])
        fresh = step == 0
        due = fresh | (step - plans.start >= self.config.replan_steps) | (step < plans.start)
        if obs.get("step") is None or plans.code is None:
            due[:] = True
        if due.any():
            self._replan(obs, prefix, due, fresh, step)
        offset = (step - plans.start).clamp(0, self.config.chunk_length - 1)
        return self.decoder.sample(prefix, plans.code, offset, noise, action_dims_kept(obs))

    def _replan(self, obs: dict, prefix, due: Tensor, fresh: Tensor, step: Tensor) -> None:
        plans = self._plans
        ids = due.nonzero()[:, 0].tolist()
        for i in ids:
            if bool(fresh[i]):
                plans.memory[i] = []
            elif plans.thought[i]:
                plans.memory[i].append(plans.thought[i])
        tasks = [obs[TASK][i] for i in ids]
        memories = [memory_text(plans.memory[i][-self.config.memory_size:] if self.config.memory_size else [])
                    for i in ids]
        sub = type(prefix)(prefix.tokens[due], prefix.mask[due])
        out = self.vla.generate(tasks, memories, sub)
        codes = self.behavior_tokenizer.fsq.digits_to_codes(out.digits).to(prefix.tokens.dtype)
        if plans.code is None:
            plans.code = torch.zeros(len(due), *codes.shape[1:], device=codes.device, dtype=codes.dtype)
        plans.code[due] = codes
        plans.start[due] = step[due]
        for i, t in zip(ids, out.thoughts):
            plans.thought[i] = t

    def annotations(self) -> list[str] | None:
        if self._plans is None or not self.config.thoughts:
            return None
        return list(self._plans.thought)

    def modules_new_in_finetuning(self) -> tuple[str, ...]:
        return ("vla.",) if self.vla is not None else ()

    def sampling_protocol(self) -> dict:
        cfg = self.config
        return {"denoising_steps": cfg.noise.num_inference_steps if cfg.decoder_head == "flow" else 0,
                "replan_every (behavior)": cfg.replan_steps, "thoughts": cfg.thoughts,
                "decoding": "greedy" if cfg.temperature <= 0 else f"temperature {cfg.temperature}"}


def window_memories(batch: dict) -> tuple[list[str], list[str]]:
    """Per window of a training batch: the memory text (the phases of the re-plans before it) and
    the thought (its own phase)."""
    phases, pads = batch[PHASE], batch[f"{PHASE}_is_pad"]
    memories = [memory_text([p for p, pad in zip(row[:-1], row_pad[:-1]) if not pad])
                for row, row_pad in zip(phases, pads.tolist())]
    return memories, [row[-1] for row in phases]


def memory_text(thoughts: list[str]) -> str:
    """Earlier thoughts as memory text, oldest first, repeats of the same sub-task merged."""
    merged = [t for i, t in enumerate(thoughts) if t and (i == 0 or t != thoughts[i - 1])]
    return "; ".join(merged)


def without_text(text: dict[str, Tensor]) -> dict[str, Tensor]:
    """Text features with zero tokens: a backbone prefix of the observation alone."""
    return {k: v[:, :0] for k, v in text.items()}


def steps_from(j: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Index pair selecting, for every row b, the n steps j[b] .. j[b]+n-1 of a (B, T, ...) tensor."""
    return torch.arange(len(j), device=j.device)[:, None], j[:, None] + torch.arange(n, device=j.device)[None]
