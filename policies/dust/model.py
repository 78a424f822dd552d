"""DUST: a dual-stream flow-matching policy that also predicts the future visual embedding.

Two streams of tokens are denoised together:

    action stream   [state tokens (T_o) | action tokens (H)]            time t_A
    vision stream   [future visual tokens (n_cam * rows * cols)]        time t_o

through ``mmdit_depth`` MM-DiT blocks (own weights per stream, one joint self-attention, each
stream's adaLN driven by its own time) and then ``stream_depth`` DiT blocks per stream. The
shared backbone's prefix (instruction + current frames) conditions both by cross-attention,
or as a third MM-DiT stream. The vision target is the frozen backbone's embedding of the
frame at t + H (``PolicyConfig.future_offsets``), so the policy learns how its chunk will
change what the cameras see.

Training draws t_A and t_o independently (decoupled noise) and minimises
L_action + lambda_wm * L_wm on flow velocities. Sampling is asynchronous: the vision stream
takes N_o = q * N_A Euler steps while the actions take one step every q-th pass, so raising
q spends more compute on the world model at test time (test-time scaling).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from policies.dust.blocks import DiTBlock, FinalLayer, MMDiTBlock, TimeEmbedder, sincos_1d, sincos_2d
from policies.dust.config import DustConfig
from vla.features import ACTION, ACTION_DIM_PAD, ACTION_PREFIX, CAMERA_PAD, OBS_STATE
from vla.heads import make_noise_process
from vla.heads.committed import committed_plan, flag_committed, no_loss, put_committed, sample_committed
from vla.heads.guidance import guided_output
from vla.layers import DecoderBlock, Rotary, default_ffn_dim
from vla.policy import Policy, action_dims_kept, hold_past_end, mask_dims, masked_mse

# Positions of the streams in the MM-DiT lists (the prefix, in "stream" mode, comes last).
_STREAM_ACTION, _STREAM_VISION = 0, 1


def _repeat(x, k: int):
    """Every tensor in a nested tuple / list / dict repeated k times along the batch (None kept)."""
    if k == 1 or x is None:
        return x
    if torch.is_tensor(x):
        return x.repeat_interleave(k, dim=0)
    if isinstance(x, dict):
        return {key: _repeat(v, k) for key, v in x.items()}
    return type(x)(_repeat(v, k) for v in x)


@dataclass
class DenoiserContext:
    """What one chunk's denoising steps share, computed once from the prefix: the prefix tokens
    (after the prefix blocks) and, with cross-attention conditioning, every block's keys / values
    of them. Shapes: tokens (B, N_p, D), mask (B, N_p); the kv lists hold one (keys, values) pair
    per block (per stream for the MMDiT blocks)."""
    tokens: Tensor
    mask: Tensor
    mmdit_kv: list | None = None     # [block][stream] -> (k, v)
    action_kv: list | None = None    # [block] -> (k, v)
    vision_kv: list | None = None    # [block] -> (k, v); only with the world-model stream

    def repeat(self, k: int) -> DenoiserContext:
        """The context of a batch whose every row is repeated k times (K noise samples per observation)."""
        return replace(self, **{f.name: _repeat(getattr(self, f.name), k) for f in fields(self)})


class DustPolicy(Policy):
    config_class = DustConfig
    supports_guidance = True
    supports_committed_actions = True

    def __init__(self, config: DustConfig):
        super().__init__(config, width=config.width)
        cfg, w = config, config.width
        ffn = cfg.ffn_dim or default_ffn_dim(w)
        self.process = make_noise_process(cfg.noise)
        self.time_action, self.time_vision = TimeEmbedder(w), TimeEmbedder(w)
        # Action stream: state tokens then action tokens, with a fixed 1-D position table.
        self.state_in = nn.Linear(cfg.state_dim, w)
        self.action_in = nn.Linear(cfg.action_dim, w)
        # training-time real-time chunking (vla/heads/committed.py): flags the clean, committed
        # actions; the stream's one action time cannot say that some of them are clean
        self.committed_embed = nn.Parameter(torch.zeros(w)) if cfg.rtc_train_max_delay > 0 else None
        self.register_buffer("action_pos", sincos_1d(cfg.n_obs_steps + cfg.horizon, w), persistent=False)
        if cfg.world_model:
            n_cam, rows, cols = self.backbone.future_grid(cfg.future_pool)
            self.vision_dim = self.backbone.vision_feature_dim
            self.n_future = n_cam * rows * cols
            # DUST: a 3-layer SiLU MLP encoder with a 2-D sinusoidal position table, a 2-layer ReLU decoder.
            self.vision_in = nn.Sequential(nn.Linear(self.vision_dim, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(),
                                           nn.Linear(w, w))
            pos = sincos_2d(rows, cols, w).repeat(n_cam, 1)  # (n_cam * rows * cols, w)
            self.register_buffer("vision_pos", pos, persistent=False)
            self.camera_embed = nn.Parameter(torch.randn(n_cam, 1, w) * 0.02)
            self.n_cam = n_cam
        # Streams: action, vision (with a world model), prefix (in "stream" mode, last). The
        # action / vision streams cross-attend to the prefix unless it is a stream itself.
        in_stream = cfg.conditioning == "stream"
        cross = [not in_stream] * (1 + int(cfg.world_model)) + [False] * int(in_stream)
        self.prefix_blocks = nn.ModuleList(DecoderBlock(w, cfg.heads, ffn) for _ in range(cfg.prefix_depth))
        self.prefix_rotary = Rotary(w // cfg.heads, self.backbone.num_tokens(cfg.n_obs_steps))
        self.mmdit = nn.ModuleList(MMDiTBlock(w, cfg.heads, ffn, cross) for _ in range(cfg.mmdit_depth))
        self.action_blocks = nn.ModuleList(DiTBlock(w, cfg.heads, ffn) for _ in range(cfg.stream_depth))
        self.action_out = FinalLayer(w, nn.Linear(w, cfg.action_dim))
        if cfg.action_free:  # no loss reaches the action decoder; DDP refuses parameters without gradients
            self.action_out.requires_grad_(False)
        if cfg.world_model:
            self.vision_blocks = nn.ModuleList(DiTBlock(w, cfg.heads, ffn) for _ in range(cfg.stream_depth))
            self.vision_out = FinalLayer(w, nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, self.vision_dim)))
        self.counters = {"forward_passes": 0, "action_updates": 0}

    # --- targets -------------------------------------------------------------------------------
    def future_tokens(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The world-model target (B, n_future, D_vis) and which of its tokens count (B, n_future)
        bool: none of a frame at t + H past the episode's end (``future_is_pad``), none of a
        camera the dataset lacks (``camera_is_pad``: its target is a black frame's)."""
        frames = self.encode_future(batch)  # (B, 1, ...)
        target = self.backbone.future_target({k: v[:, -1] for k, v in frames.items()}, self.config.future_pool)
        if self.config.target_norm == "layer":
            target = nn.functional.layer_norm(target, target.shape[-1:])
        is_pad = batch.get("future_is_pad")
        valid = (~is_pad[:, -1] if is_pad is not None
                 else torch.ones(target.shape[0], dtype=torch.bool, device=target.device))
        valid = valid[:, None].expand(-1, target.shape[1])
        camera_pad = batch.get(CAMERA_PAD)
        if camera_pad is not None:  # the target is camera-major: each camera's pooled grid in turn
            per_camera = target.shape[1] // camera_pad.shape[1]
            valid = valid & ~camera_pad.to(valid.device).repeat_interleave(per_camera, dim=1)
        return target, valid

    # --- the denoiser ------------------------------------------------------------------------
    def _context(self, prefix) -> DenoiserContext:
        """Per-chunk work on the prefix: cross-attention keys / values of every block (reused at
        every denoising step), or the prefix as the third stream."""
        tokens = prefix.tokens
        if len(self.prefix_blocks):
            keys = prefix.mask[:, None, None, :]  # (B, 1, 1, N_p): bidirectional, padding hidden
            for block in self.prefix_blocks:
                tokens = block(tokens, self.prefix_rotary, keys)
        ctx = DenoiserContext(tokens, prefix.mask)
        if self.config.conditioning == "cross_attention":
            ctx.mmdit_kv = [[s.cross.prefix_kv(tokens) for s in block.streams] for block in self.mmdit]
            ctx.action_kv = [b.prefix_kv(tokens) for b in self.action_blocks]
            if self.config.world_model:
                ctx.vision_kv = [b.prefix_kv(tokens) for b in self.vision_blocks]
        return ctx

    def velocity(self, state: Tensor, actions: Tensor, t_action: Tensor, future: Tensor | None, t_vision: Tensor | None,
                 ctx: DenoiserContext, committed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """One forward pass. state (B, T_o, D_s) normalized, noisy actions (B, H, D_a) at t_action
        (B,), noisy future tokens (B, n_future, D_vis) at t_vision (B,) -> velocities, same shapes.
        ``committed`` (B, H) flags actions that go in clean (training-time real-time chunking).

        Actions past an episode's end (``action_is_pad``) are left out of the loss only, never
        hidden from attention: sampling has no padding, and a mask seen only in training tells
        the model where episodes end. DUST once read its stack release from that mask: its
        chunks opened the gripper in 88% of release windows with it and 19% without it, and
        each demonstration's release sits a few frames before the end (docs/quality.md)."""
        self.counters["forward_passes"] += 1
        cfg = self.config
        action_tokens = flag_committed(self.action_in(actions), committed, self.committed_embed)
        a = torch.cat([self.state_in(state), action_tokens], dim=1) + self.action_pos
        c_a = self.time_action(self.process.model_time(t_action))
        xs, cs, masks = [a], [c_a], [None]
        if cfg.world_model:
            per_camera = self.camera_embed.expand(-1, self.n_future // self.n_cam, -1).reshape(self.n_future, -1)
            v = self.vision_in(future) + self.vision_pos + per_camera
            c_o = self.time_vision(self.process.model_time(t_vision))
            xs, cs, masks = xs + [v], cs + [c_o], masks + [None]
        stream_mode = cfg.conditioning == "stream"
        if stream_mode:
            # The context stream has no time of its own; it is modulated by the streams' mean.
            xs, cs, masks = xs + [ctx.tokens], cs + [torch.stack(cs).mean(0)], masks + [ctx.mask]
        for i, block in enumerate(self.mmdit):
            xs = block(xs, cs, masks, None if stream_mode else ctx.mmdit_kv[i], ctx.mask)
        if stream_mode:
            kv_source = xs[-1]
            kv = {"action": [b.prefix_kv(kv_source) for b in self.action_blocks]}
            if cfg.world_model:
                kv["vision"] = [b.prefix_kv(kv_source) for b in self.vision_blocks]
        else:
            kv = {"action": ctx.action_kv, "vision": ctx.vision_kv}
        a = xs[_STREAM_ACTION]
        for block, block_kv in zip(self.action_blocks, kv["action"]):
            a = block(a, c_a, block_kv, ctx.mask)
        v_action = self.action_out(a[:, cfg.n_obs_steps:], c_a)
        v_vision = None
        if cfg.world_model:
            v = xs[_STREAM_VISION]
            for block, block_kv in zip(self.vision_blocks, kv["vision"]):
                v = block(v, c_o, block_kv, ctx.mask)
            v_vision = self.vision_out(v, c_o)
        return v_action, v_vision

    # --- the contract --------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Decoupled flow matching: L_action + lambda_wm * L_wm (only L_wm when action-free).
        With ``noise_samples = K`` each observation is denoised at K time pairs sharing one
        prefix pass: exactly the loss of the batch repeated K times."""
        cfg = self.config
        k = cfg.noise_samples
        prefix = self.prefix(batch)
        ctx = self._context(prefix).repeat(k)
        state = _repeat(batch[OBS_STATE], k)
        b, device = state.shape[0], state.device
        if cfg.action_free:
            actions = torch.zeros(b, cfg.horizon, cfg.action_dim, device=device)
            t_a = torch.ones(b, device=device)  # pure noise, no loss: the stream carries no action information
        else:
            # Padded steps hold the last real action, whatever the caller put there: they stay
            # visible to the other action tokens (see `velocity`), so their values must not vary.
            actions = hold_past_end(_repeat(batch[ACTION], k), _repeat(batch.get(f"{ACTION}_is_pad"), k))
            t_a = self.process.sample_time(b, device)
        keep = None if cfg.action_free else action_dims_kept(batch, k)  # a mixture's padded dims stay 0
        noise_a = mask_dims(torch.randn_like(actions), keep)
        noisy_a = self.process.add_noise(actions, noise_a, t_a)
        committed = None
        if self.committed_embed is not None:  # a simulated inference delay: these go in clean, no loss
            committed = sample_committed(b, cfg.horizon, cfg.rtc_train_max_delay, device)
            noisy_a = put_committed(noisy_a, actions, committed)
        future = noisy_o = t_o = noise_o = None
        if cfg.world_model:
            future, valid = _repeat(self.future_tokens(batch), k)
            t_o = self.process.sample_time(b, device) if cfg.decoupled_noise else t_a
            noise_o = torch.randn_like(future)
            noisy_o = self.process.add_noise(future, noise_o, t_o)
        is_pad = _repeat(batch.get(f"{ACTION}_is_pad"), k)
        v_a, v_o = self.velocity(state, noisy_a, t_a, noisy_o, t_o, ctx, committed=committed)
        v_a = mask_dims(v_a, keep)
        logs: dict[str, float] = {}
        loss = torch.zeros((), device=device)
        if not cfg.action_free:
            dim_pad = _repeat(batch.get(ACTION_DIM_PAD), k)  # a mixture's embodiments with fewer action dims
            l_action = masked_mse(v_a, self.process.target(actions, noise_a, t_a), no_loss(is_pad, committed), dim_pad)
            loss = loss + l_action
            logs["action_loss"] = l_action.item()
        if cfg.world_model:
            err = (v_o - self.process.target(future, noise_o, t_o)).pow(2).mean(dim=2)  # (B, n_future)
            l_wm = (err * valid).sum() / valid.sum().clamp(min=1)
            loss = loss + cfg.lambda_wm * l_wm
            logs["wm_loss"] = l_wm.item()
        aux, aux_logs = self.auxiliary_loss(prefix, batch)
        if aux is not None:
            loss = loss + aux
            logs.update(aux_logs)
        return loss, {"loss": loss.item(), **logs}

    @torch.no_grad()
    def sample_actions(self, obs: dict, noise: Tensor | None = None) -> Tensor:
        """(B, H, D_a) normalized actions by asynchronous joint sampling (:meth:`sample_joint`)."""
        return self.sample_joint(obs, noise)[0]

    @torch.no_grad()
    def sample_joint(self, obs: dict, noise: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Asynchronous joint sampling: N_o = q * N_A vision steps, an action step every q-th.

        Action block k (k = 0 .. N_A - 1) holds the actions at t_A = 1 - k / N_A for its q
        passes; the vision tokens take a step of 1 / N_o after every pass. The action update
        uses the velocity of the block's last pass ("end") or its first ("start"). Returns
        (B, H, D_a) normalized actions at t_A = 0 and the vision stream's final estimate of the
        future embedding (B, n_future, D_vis), in the space of :meth:`future_tokens` (None
        without a world model); ``counters`` count passes and updates. ``noise`` fixes the
        actions' start (and makes the vision start a fixed-seed draw).
        """
        cfg = self.config
        prefix = self.prefix(obs)
        state = obs[OBS_STATE].to(prefix.tokens.dtype)
        b, device, dtype = state.shape[0], state.device, prefix.tokens.dtype
        ctx = self._context(prefix)
        keep = action_dims_kept(obs)  # a mixture's embodiment: its padded action dims stay 0
        actions = mask_dims(noise if noise is not None
                            else torch.randn(b, cfg.horizon, cfg.action_dim, device=device, dtype=dtype), keep)
        n_a, q = cfg.noise.num_inference_steps, cfg.vision_ratio
        n_o = n_a * q
        future = None
        if cfg.world_model:
            # Given the action start, the vision start is a fixed-seed draw: the call is then deterministic.
            gen = torch.Generator(device=device).manual_seed(0) if noise is not None else None
            future = torch.randn(b, self.n_future, self.vision_dim, device=device, dtype=dtype, generator=gen)
        updates, update_at = 0, q - 1 if cfg.action_update == "end" else 0
        guide = obs.get(ACTION_PREFIX)  # real-time chunking: agree with the plan being executed
        plan = flags = None
        if guide is not None and guide.method == "condition":  # training-time RTC: continue the committed actions
            (plan, flags), guide = committed_plan(guide, cfg.rtc_train_max_delay), None
        for j in range(n_o):
            t_a, t_o = 1.0 - updates / n_a, 1.0 - j / n_o
            ta, to = torch.full((b,), t_a, device=device), torch.full((b,), t_o, device=device)
            actions = put_committed(actions, plan, flags)
            if guide is not None and j % q == update_at:
                v_a, v_o = self._guided_velocity(guide, state, actions, t_a, ta, future, to, ctx, keep)
            else:
                v_a, v_o = self.velocity(state, actions, ta, future, to, ctx, committed=flags)
            if cfg.world_model:
                future = self.process.step(future, v_o, t_o, 1.0 - (j + 1) / n_o)
            if j % q == update_at:
                actions = self.process.step(actions, mask_dims(v_a, keep), t_a, 1.0 - (updates + 1) / n_a)
                updates += 1
        self.counters["action_updates"] += updates
        self.last_action_time = 1.0 - updates / n_a
        return put_committed(actions, plan, flags), future

    def _guided_velocity(self, guide, state: Tensor, actions: Tensor, t_a: float, ta: Tensor, future: Tensor | None,
                         to: Tensor, ctx, keep: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One pass whose action velocity is guided toward ``guide`` (real-time chunking,
        vla/heads/guidance.py); the vision velocity is the same pass's. ``ta`` / ``to``: the
        streams' times as (B,) tensors, ``t_a`` the action time as the process takes it."""
        out: dict[str, Tensor | None] = {}

        def action_velocity(a: Tensor) -> Tensor:
            out["v_a"], out["v_o"] = self.velocity(state, a, ta, future, to, ctx)
            return mask_dims(out["v_a"], keep)

        v_a = guided_output(self.process, actions, t_a, action_velocity, guide)
        return v_a, (out["v_o"].detach() if out["v_o"] is not None else None)

    # --- sampling knobs ----------------------------------------------------------------------
    def set_test_time_scaling(self, factor: int) -> None:
        """q = ``factor`` vision denoising steps per action step (N_o = q * N_A)."""
        if factor < 1:
            raise ValueError(f"test-time scaling must be >= 1, got {factor}")
        if not self.config.world_model:
            raise ValueError("test-time scaling refines the vision stream, which lambda_wm=0 removes")
        self.config.vision_ratio = int(factor)

    def sampling_protocol(self) -> dict:
        n_a, q = self.config.noise.num_inference_steps, self.config.vision_ratio
        out = {"action_denoising_steps (N_A)": n_a}
        if self.config.world_model:
            out.update({"vision_ratio (q)": q, "vision_denoising_steps (N_o)": n_a * q,
                        "action_update": self.config.action_update})
        return out
