"""Dita's in-context denoiser.

One causal LLaMA-style transformer over

    [ prefix tokens (N_p) | timestep token (1) | noisy action tokens (H) ]

where the prefix is the shared backbone's language, visual (T_o frames) and state tokens.
The timestep token is the raw sinusoidal embedding of the DDPM step, as in the paper; the
noisy actions enter through a linear projection; a linear head reads epsilon off the action
positions. Causal attention means the prefix never sees the actions, which makes a prefix
KV cache exact: the prefix runs once per chunk, only the H + 1 suffix tokens per step.

With ``rtc_train_max_delay`` (training-time real-time chunking, vla/heads/committed.py) the first
d action tokens may be committed: clean actions plus a learned "committed" embedding, no loss.
The single timestep token cannot say that some actions are clean, so the embedding does.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from policies.dita.config import DitaConfig
from vla.features import ACTION_DIM_PAD, ACTION_PREFIX
from vla.heads import make_noise_process, sinusoidal_embedding
from vla.heads.committed import committed_plan, flag_committed, no_loss, put_committed, sample_committed
from vla.heads.guidance import ActionPrefix, guided_output
from vla.layers import DecoderBlock, GrowingKVCache, RMSNorm, Rotary, StaticKVCache, causal_mask, default_ffn_dim
from vla.policy import Policy, action_dims_kept, mask_dims, masked_mse


class DitaPolicy(Policy):
    config_class = DitaConfig
    supports_guidance = True
    supports_committed_actions = True

    def __init__(self, config: DitaConfig):
        super().__init__(config, width=config.width)
        ffn = config.ffn_dim or default_ffn_dim(config.width)
        self.blocks = nn.ModuleList(
            DecoderBlock(config.width, config.heads, ffn, config.attn_dropout) for _ in range(config.depth)
        )
        self.norm = RMSNorm(config.width)
        self.action_in = nn.Linear(config.action_dim, config.width)
        self.action_out = nn.Linear(config.width, config.action_dim)
        self.n_prefix = self.backbone.num_tokens(config.n_obs_steps)
        self.rotary = Rotary(config.width // config.heads, self.n_prefix + 1 + config.horizon)
        self.process = make_noise_process(config.noise)
        # only when trained for it, so checkpoints without it keep loading
        self.committed_embed = nn.Parameter(torch.zeros(config.width)) if config.rtc_train_max_delay > 0 else None

    # --- the denoiser ------------------------------------------------------------------
    def _suffix(self, noisy_actions: Tensor, t: Tensor, committed: Tensor | None = None) -> Tensor:
        """Timestep token + action tokens: (B, 1 + H, D); ``committed`` (B, H) flags clean actions."""
        time = sinusoidal_embedding(self.process.model_time(t), self.config.width)  # t is on-device
        actions = flag_committed(self.action_in(noisy_actions), committed, self.committed_embed)
        return torch.cat([time[:, None].to(noisy_actions.dtype), actions], dim=1)

    def _run(self, x: Tensor, mask: Tensor, start: int, cache=None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, mask, start, cache, i)
        return x

    def denoise(self, prefix_tokens: Tensor, full_mask: Tensor, noisy_actions: Tensor, t: Tensor,
                keep: Tensor | None = None, committed: Tensor | None = None) -> Tensor:
        """Uncached: the whole sequence at once. Returns predicted epsilon (B, H, D_a)."""
        x = torch.cat([prefix_tokens, self._suffix(noisy_actions, t, committed)], dim=1)
        x = self._run(x, full_mask, 0, None)
        return mask_dims(self.action_out(self.norm(x[:, -self.config.horizon:])), keep)

    def _full_mask(self, prefix_mask: Tensor) -> Tensor:
        b, s = prefix_mask.shape[0], 1 + self.config.horizon
        suffix = torch.ones(b, s, dtype=torch.bool, device=prefix_mask.device)
        return causal_mask(torch.cat([prefix_mask, suffix], dim=1))  # (B, 1, L, L)

    # --- the contract ------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Epsilon-prediction loss; with ``noise_samples = K`` every observation is denoised at
        K noise levels that share one prefix pass (exactly K copies of the sample, cheaper)."""
        prefix = self.prefix(batch)
        k, n_p = self.config.noise_samples, self.n_prefix
        actions = batch["action"].repeat_interleave(k, dim=0)  # (B*K, H, D_a)
        is_pad = batch.get("action_is_pad")
        is_pad = is_pad.repeat_interleave(k, dim=0) if is_pad is not None else None
        keep = action_dims_kept(batch, k)
        noise = torch.randn_like(actions) if keep is None else torch.randn_like(actions) * keep
        t = self.process.sample_time(actions.shape[0], actions.device)
        noisy = self.process.add_noise(actions, noise, t)
        committed = None
        if self.committed_embed is not None:  # a simulated inference delay: these go in clean, no loss
            committed = sample_committed(actions.shape[0], self.config.horizon, self.config.rtc_train_max_delay,
                                         actions.device)
            noisy = put_committed(noisy, actions, committed)
            is_pad = no_loss(is_pad, committed)
        mask = self._full_mask(prefix.mask)
        if k == 1:
            pred = self.denoise(prefix.tokens, mask, noisy, t, keep, committed)
        else:
            cache = GrowingKVCache()  # differentiable: gradients reach the prefix through its keys / values
            self._run(prefix.tokens, mask[:, :, :n_p, :n_p], 0, cache)
            cache = cache.repeat_interleave(k)
            h = self._run(self._suffix(noisy, t, committed), mask[:, :, n_p:].repeat_interleave(k, dim=0), n_p, cache)
            pred = mask_dims(self.action_out(self.norm(h[:, 1:])), keep)
        dim_pad = batch.get(ACTION_DIM_PAD)  # a mixture's embodiments with fewer action dimensions
        dim_pad = dim_pad.repeat_interleave(k, dim=0) if dim_pad is not None else None
        loss = masked_mse(pred, self.process.target(actions, noise, t), is_pad, dim_pad)
        logs = {"action_loss": loss.item()}
        aux, aux_logs = self.auxiliary_loss(prefix, batch)
        if aux is not None:
            loss = loss + aux
            logs.update(aux_logs)
        return loss, {"loss": loss.item(), **logs}

    def _prefill(self, prefix_tokens: Tensor, prefix_mask: Tensor) -> StaticKVCache:
        """Keys / values of the prefix at positions [0, N_p) of a cache sized for the whole sequence."""
        cfg = self.config
        cache = StaticKVCache(cfg.depth, prefix_tokens.shape[0], cfg.heads, self.n_prefix + 1 + cfg.horizon,
                              cfg.width // cfg.heads, prefix_tokens.device, prefix_tokens.dtype)
        self._run(prefix_tokens, prefix_mask, 0, cache)
        return cache

    @torch.no_grad()
    def sample_actions(self, obs: dict, noise: Tensor | None = None, use_cache: bool | None = None) -> Tensor:
        """Observation -> (B, H, D_a) normalized actions; ``noise`` (B, H, D_a) fixes the start."""
        prefix = self.prefix(obs)
        b = prefix.tokens.shape[0]
        x = noise if noise is not None else torch.randn(
            b, self.config.horizon, self.config.action_dim, device=prefix.tokens.device, dtype=prefix.tokens.dtype
        )
        keep = action_dims_kept(obs)
        x = mask_dims(x, keep)
        mask = self._full_mask(prefix.mask)
        guide = obs.get(ACTION_PREFIX)
        if guide is not None and guide.method == "condition":  # training-time RTC: continue the committed actions
            committed = committed_plan(guide, self.config.rtc_train_max_delay)
            return self._sample_cached(prefix.tokens, mask, x, keep, committed)
        if guide is not None:  # real-time chunking: agree with the plan being executed
            return self._sample_guided(prefix.tokens, mask, x, keep, guide)
        use_cache = self.config.use_prefix_cache if use_cache is None else use_cache
        sample = self._sample_cached if use_cache else self._sample_uncached
        return sample(prefix.tokens, mask, x, keep)

    def _sample_uncached(self, prefix_tokens: Tensor, mask: Tensor, x: Tensor, keep: Tensor | None = None) -> Tensor:
        times = self.process.sampling_times()
        for t, t_next in zip(times[:-1], times[1:]):
            tt = torch.full((x.shape[0],), t, device=x.device)
            x = self.process.step(x, self.denoise(prefix_tokens, mask, x, tt, keep), t, t_next)
        return x

    def sample_from_prefix(self, prefix_tokens: Tensor, prefix_mask: Tensor, noise: Tensor) -> Tensor:
        """The whole cached sampler from backbone tokens: static shapes, capturable in a CUDA graph."""
        return self._sample_cached(prefix_tokens, self._full_mask(prefix_mask), noise)

    def capture_sampler(self, batch_size: int = 1):
        """A CUDA-graph replay of :meth:`sample_from_prefix` for ``batch_size`` (GPU only).

        Returns ``sample(obs, noise=None) -> (B, H, D_a)``; the backbone projection runs
        eagerly, the prefix pass and every denoising step replay from one graph.
        """
        from vla.cuda_graph import CapturedFunction

        device, cfg = next(self.parameters()).device, self.config
        dtype = self.action_out.weight.dtype
        example = (torch.zeros(batch_size, self.n_prefix, cfg.width, device=device, dtype=dtype),
                   torch.ones(batch_size, self.n_prefix, dtype=torch.bool, device=device),
                   torch.zeros(batch_size, cfg.horizon, cfg.action_dim, device=device, dtype=dtype))
        graphed = CapturedFunction(self.sample_from_prefix, example)

        @torch.no_grad()
        def sample(obs: dict, noise: Tensor | None = None) -> Tensor:
            prefix = self.prefix(obs)
            noise = noise if noise is not None else torch.randn_like(example[2])
            return graphed(prefix.tokens.to(dtype), prefix.mask, noise.to(dtype))

        return sample

    def _sample_cached(self, prefix_tokens: Tensor, mask: Tensor, x: Tensor, keep: Tensor | None = None,
                       committed: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``committed`` = (actions, positions): those go in clean at every step, as in training."""
        n_p = self.n_prefix
        cache = self._prefill(prefix_tokens, mask[:, :, :n_p, :n_p])
        suffix_mask = mask[:, :, n_p:, :]  # (B, 1, 1 + H, L): suffix rows over every key
        plan, flags = committed if committed is not None else (None, None)
        times = self.process.sampling_times()
        for t, t_next in zip(times[:-1], times[1:]):
            tt = torch.full((x.shape[0],), t, device=x.device)
            x = put_committed(x, plan, flags)
            h = self._run(self._suffix(x, tt, flags), suffix_mask, n_p, cache)  # writes [N_p, L) in place
            x = self.process.step(x, mask_dims(self.action_out(self.norm(h[:, 1:])), keep), t, t_next)
        return put_committed(x, plan, flags)

    def _sample_guided(self, prefix_tokens: Tensor, mask: Tensor, x: Tensor, keep: Tensor | None,
                       guide: ActionPrefix) -> Tensor:
        """Like :meth:`_sample_cached`, each step's output guided toward ``guide`` (vla.heads.guidance).
        The guidance differentiates through the suffix, so the prefix's keys / values sit in a
        concatenating cache that every step extends afresh instead of the in-place static one."""
        n_p = self.n_prefix
        prefix_cache = GrowingKVCache()
        self._run(prefix_tokens, mask[:, :, :n_p, :n_p], 0, prefix_cache)
        suffix_mask = mask[:, :, n_p:, :]
        times = self.process.sampling_times()
        for t, t_next in zip(times[:-1], times[1:]):
            epsilon = partial(self._suffix_epsilon, t=t, suffix_mask=suffix_mask, cache=prefix_cache, keep=keep)
            x = self.process.step(x, mask_dims(guided_output(self.process, x, t, epsilon, guide), keep), t, t_next)
        return x

    def _suffix_epsilon(self, noisy: Tensor, t: float, suffix_mask: Tensor, cache: GrowingKVCache,
                        keep: Tensor | None) -> Tensor:
        """Predicted epsilon of one denoising step over a fork of the prefix's keys / values."""
        tt = torch.full((noisy.shape[0],), t, device=noisy.device)
        h = self._run(self._suffix(noisy, tt), suffix_mask, self.n_prefix, cache.fork())
        return mask_dims(self.action_out(self.norm(h[:, 1:])), keep)
