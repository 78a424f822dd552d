"""The behavior-token VLA: a causal LM over instruction, memory, observation, thought, behavior.

One re-planning step is one sequence (the paper's inference loop: instruction, memory and
the current observation in, thought and behavior out; memory is carried forward as text):

    prompt (fixed layout, length P; no loss)                         continuation (loss)
    [bos] task: <instruction> memory: <memory> observation: <obs> thought: | <thought> <b_1 .. b_K>

``<obs>`` are the shared backbone's prefix tokens for the current observation, projected to
the LM width. Text segments of the prompt are padded to fixed lengths (padding is masked),
so the prompt has the same layout at training and at inference. ``<b_1 .. b_K>`` are
K = n_codes x len(fsq_levels) behavior tokens, dimension d from its own token set. With
``thoughts`` off the continuation is the behavior tokens alone.

Generation is constrained: while thinking, only text tokens or a first-dimension behavior
token (which ends the thought) may follow; then each position may only emit the tokens of
its dimension, so every generated behavior decodes to a valid FSQ code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.omnijarvis.config import OmniJarvisConfig
from policies.omnijarvis.lm import BehaviorVocab, load_tokenizer, make_lm
from vla.backbone import Prefix

IGNORE = -100


@dataclass
class TrainingSequence:
    embeds: Tensor    # (B, L, D_lm)
    key_mask: Tensor  # (B, L) bool, True = a real position
    labels: Tensor    # (B, L) token id at thought / behavior positions, IGNORE elsewhere
    is_behavior: Tensor  # (B, L) bool: positions of behavior tokens


@dataclass
class Generation:
    thoughts: list[str]  # B decoded thoughts ("" without thoughts)
    digits: Tensor       # (B, n_codes, d) FSQ digits of the behavior
    tokens: Tensor       # (B, L) every generated token id, -1 after the behavior's last token


class BehaviorVLA(nn.Module):
    def __init__(self, config: OmniJarvisConfig, n_prefix: int):
        super().__init__()
        self.config = config
        self.tokenizer = load_tokenizer(config.lm)
        self.vocab = BehaviorVocab(self.tokenizer, config.fsq_levels)
        self.n_behavior = config.n_codes * len(config.fsq_levels)
        self.max_thought = config.max_thought_tokens if config.thoughts else 0
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        words = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.labels = {"bos": [bos] if bos is not None else [], "task": words("task:"), "memory": words("memory:"),
                       "obs": words("observation:"), "thought": words("thought:" if config.thoughts else "behavior:")}
        # n_prefix bounds the observation tokens (the policy passes a prefix without text)
        self.lm = make_lm(config.lm, self.vocab.size, self.prompt_length(n_prefix) + self.max_thought + self.n_behavior)
        self.obs_proj = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, self.lm.hidden_size))
        self.register_buffer("text_mask", self.vocab.text_mask, persistent=False)
        self.register_buffer("dim_masks", self.vocab.dim_masks, persistent=False)
        self.register_buffer("digit_of", self.vocab.digit_of, persistent=False)

    # --- sequences ------------------------------------------------------------------------------
    def prompt_length(self, n_obs_tokens: int) -> int:
        """P for an observation of ``n_obs_tokens`` prefix tokens."""
        cfg = self.config
        return (sum(len(self.labels[k]) for k in ("bos", "task", "memory", "obs", "thought"))
                + cfg.max_instruction_tokens + cfg.max_memory_tokens + n_obs_tokens)

    def _text(self, texts: list[str], length: int, device) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, padding="max_length", truncation=True,
                             max_length=length, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].bool().to(device)

    def _fixed(self, name: str, b: int, device) -> tuple[Tensor, Tensor]:
        ids = torch.tensor(self.labels[name], dtype=torch.long, device=device).expand(b, -1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def prompt(self, tasks: list[str], memories: list[str], prefix: Prefix) -> tuple[Tensor, Tensor]:
        """Embeddings (B, P, D_lm) and key mask (B, P) of the prompt."""
        b, device, cfg = len(tasks), prefix.tokens.device, self.config
        parts = [self._fixed("bos", b, device), self._fixed("task", b, device),
                 self._text(tasks, cfg.max_instruction_tokens, device), self._fixed("memory", b, device),
                 self._text(memories, cfg.max_memory_tokens, device), self._fixed("obs", b, device)]
        embeds = [self.lm.embed(ids) for ids, _ in parts]
        masks = [m for _, m in parts]
        embeds.append(self.obs_proj(prefix.tokens).to(embeds[0].dtype))
        masks.append(prefix.mask)
        ids, m = self._fixed("thought", b, device)
        embeds.append(self.lm.embed(ids))
        masks.append(m)
        return torch.cat(embeds, dim=1), torch.cat(masks, dim=1)

    def continuation(self, thoughts: list[str] | None, digits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids (B, L_c) of thought + behavior tokens packed left, their mask, and which are behaviors."""
        b, device = digits.shape[0], digits.device
        behavior = self.vocab.token_ids(digits).flatten(1)  # (B, K)
        if not self.config.thoughts:
            ones = torch.ones_like(behavior, dtype=torch.bool)
            return behavior, ones, ones
        thought, t_mask = self._text(thoughts, self.max_thought, device)
        n = t_mask.sum(1)
        length = self.max_thought + self.n_behavior
        ids = torch.zeros(b, length, dtype=torch.long, device=device)
        pos = torch.arange(length, device=device)[None]
        is_behavior = (pos >= n[:, None]) & (pos < n[:, None] + self.n_behavior)
        ids[:, : self.max_thought] = torch.where(t_mask, thought, 0)
        ids[is_behavior] = behavior.flatten()
        return ids, pos < (n[:, None] + self.n_behavior), is_behavior

    def training_sequence(self, tasks, memories, prefix: Prefix, thoughts, digits: Tensor) -> TrainingSequence:
        p_emb, p_mask = self.prompt(tasks, memories, prefix)
        ids, c_mask, c_beh = self.continuation(thoughts, digits)
        labels = torch.cat([torch.full_like(p_mask, IGNORE, dtype=torch.long), torch.where(c_mask, ids, IGNORE)], 1)
        return TrainingSequence(torch.cat([p_emb, self.lm.embed(ids)], 1), torch.cat([p_mask, c_mask], 1), labels,
                                torch.cat([torch.zeros_like(p_mask), c_beh], 1))

    def loss(self, seq: TrainingSequence) -> tuple[Tensor, dict[str, float]]:
        """Next-token cross-entropy on thought and behavior tokens only (a prefix-LM loss)."""
        hidden = self.lm(seq.embeds, seq.key_mask)
        target = seq.labels[:, 1:]
        supervised = target != IGNORE
        logits = self.lm.logits(hidden[:, :-1][supervised])  # only where a token is predicted
        ce = F.cross_entropy(logits.float(), target[supervised], reduction="none")
        behavior = seq.is_behavior[:, 1:][supervised]
        correct = (logits.argmax(-1) == target[supervised]).float()
        logs = {"behavior_loss": ce[behavior].mean().item(), "behavior_acc": correct[behavior].mean().item()}
        if self.config.thoughts:
            logs["thought_loss"] = ce[~behavior].mean().item() if (~behavior).any() else 0.0
        return ce.mean(), logs

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tasks: list[str], memories: list[str], prefix: Prefix) -> Generation:
        """Thoughts and behaviors for B prompts, under the constraints above."""
        embeds, mask = self.prompt(tasks, memories, prefix)
        b, k, d = embeds.shape[0], self.n_behavior, len(self.config.fsq_levels)
        logits, state = self.lm.prefill(embeds, mask, self.max_thought + k)
        emitted = torch.zeros(b, dtype=torch.long, device=embeds.device)  # behavior tokens so far
        n_thought = torch.zeros_like(emitted)
        thought_ids = torch.zeros(b, self.max_thought, dtype=torch.long, device=embeds.device)
        digits = torch.zeros(b, k, dtype=torch.long, device=embeds.device)
        rows = torch.arange(b, device=embeds.device)
        tokens = []
        for _ in range(self.max_thought + k):
            token = self._choose(logits, self.allowed(emitted, n_thought))
            tokens.append(torch.where(emitted < k, token, -1))
            thinking = (emitted == 0) & (self.digit_of[token] < 0)
            behaving = (emitted < k) & ~thinking
            thought_ids[rows[thinking], n_thought[thinking]] = token[thinking]
            digits[rows[behaving], emitted[behaving]] = self.digit_of[token[behaving]]
            n_thought += thinking.long()
            emitted += behaving.long()
            if bool((emitted == k).all()):
                break
            logits, state = self.lm.step(self.lm.embed(token[:, None]), state)
        thoughts = [self.tokenizer.decode(thought_ids[i, : n_thought[i]], skip_special_tokens=True) for i in range(b)]
        return Generation(thoughts, digits.view(b, self.config.n_codes, d), torch.stack(tokens, 1))

    def allowed(self, emitted: Tensor, n_thought: Tensor) -> Tensor:
        """(B, V) bool: the tokens each row may emit next."""
        d, k = len(self.config.fsq_levels), self.n_behavior
        allowed = self.dim_masks[emitted % d].clone()  # the next behavior position's set (dim 0 at first)
        may_think = (emitted == 0) & (n_thought < self.max_thought)
        allowed[may_think] |= self.text_mask
        allowed[emitted >= k] = True  # finished rows: ignored
        return allowed

    def _choose(self, logits: Tensor, allowed: Tensor) -> Tensor:
        logits = logits.float().masked_fill(~allowed, float("-inf"))
        if self.config.temperature <= 0:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits / self.config.temperature, -1), 1)[:, 0]
