"""The runtime policy: what eval and deploy run, identical in both.

It owns everything between raw observations and raw actions, so a policy only ever sees
normalized tensors:

    obs (numpy, B envs) -> images to [0, 1], state normalized -> frozen features per frame
    -> history of the last T_o frames -> policy.sample_actions -> (B, H, D_a) -> unnormalize
    -> action queue: the next T_a actions are executed before re-planning
       (or temporal ensembling: re-plan every step, average overlapping predictions)

Timeline for T_o = 2, H = 16, T_a = 8 (one character per control step):

    observations   o o                      frames t-1 and t are observed
    chunk               a a a a a a a a a a a a a a a a   actions t .. t+15 predicted
    executed            x x x x x x x x                   actions t .. t+7 run, then re-plan

It never asks how a chunk was made, so any chunk length and any policy fits.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

from vla.contract import check_observation
from vla.data.normalize import EmbodimentNormalizers, Normalizer, pad_last
from vla.errors import CheckpointError, ConfigError
from vla.data.mapping import observation_map
from vla.features import ACTION, ACTION_DIM_PAD, ACTION_PREFIX, CAMERA_PAD, EMBODIMENT, OBS_STATE, TASK, image_key
from vla.heads.guidance import ActionPrefix
from vla.policy import Policy
from vla.chunking import ChunkPrefix, ensemble_average
from vla.seeding import sampling_seed, seeded


def batch_of_one(obs: dict) -> dict:
    """An unbatched observation -> a batch of one (strings in a list, arrays with a leading 1)."""
    return {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}


class RuntimePolicy:
    """Batched, stateful wrapper: ``act(obs) -> actions`` for B environments in lockstep."""

    def __init__(self, policy: Policy, normalizer: Normalizer | EmbodimentNormalizers, *,
                 n_action_steps: int | None = None, temporal_ensemble: float | None = None,
                 embodiment: str | None = None):
        cfg = policy.config
        # A mixture checkpoint runs as one of its embodiments: that entry's statistics, token and widths.
        self.embodiment, self.state_dim, self.action_dim = None, cfg.state_dim, cfg.action_dim
        if isinstance(normalizer, EmbodimentNormalizers):
            names = normalizer.names
            self.embodiment, normalizer, dims = normalizer.select(embodiment)
            self.state_dim, self.action_dim = dims["state_dim"], dims["action_dim"]
            embodiment = names[self.embodiment]
        elif embodiment is not None:
            raise ConfigError(f"embodiment {embodiment!r}: this checkpoint was trained on one dataset, not a mixture")
        # The dataset's mapping (that embodiment's, in a mixture) turns an env's keys into the
        # policy's as it turned the dataset's: a camera under the dataset's name, a state slice,
        # a camera the dataset lacked (zero images, masked tokens whatever the env has).
        self.feature_map = observation_map(getattr(policy, "trained_on", None), embodiment)
        self.camera_pad = [image_key(c) in self.feature_map.absent for c in cfg.backbone.cameras]
        if ACTION not in normalizer.keys():

            raise CheckpointError("this checkpoint has no action statistics: it was trained without actions "
                                  "(action-free pretraining); fine-tune it on data with actions (train.init_from=...)")
        self.policy, self.normalizer = policy.eval(), normalizer
        self.n_obs_steps, self.horizon = cfg.n_obs_steps, cfg.horizon
        self.n_action_steps = n_action_steps or cfg.n_action_steps
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [1, horizon={self.horizon}]")
        self.ensemble = temporal_ensemble
        self.device = next(policy.parameters()).device
        self._text_cache: dict[str, dict[str, Tensor]] = {}
        self.reset()

    @property
    def cameras(self) -> list[str]:
        return list(self.policy.config.backbone.cameras)

    @property
    def follows_prefix(self) -> bool:
        """Whether chunks can be sampled to agree with a plan (real-time chunking, vla/chunking.py)."""
        return self.policy.supports_guidance

    @property
    def committed_max_delay(self) -> int:
        """How many committed actions the policy was trained to continue (``rtc_method=condition``); 0: none."""
        return self.policy.config.rtc_train_max_delay if self.policy.supports_committed_actions else 0

    def describe(self) -> dict:
        """What a report says about the policy: its name and how it samples."""
        return {"policy": self.policy.config.name, **self.policy.sampling_protocol()}

    @classmethod
    def from_settings(cls, policy: Policy, normalizer: Normalizer, settings, where: str) -> RuntimePolicy:
        """A runtime from a config section with n_action_steps, temporal_ensemble, inference_steps
        and test_time_scaling (``eval`` or ``deploy``); a bad value is a ConfigError naming it."""

        for key, setter in (("inference_steps", policy.set_inference_steps),
                            ("test_time_scaling", policy.set_test_time_scaling)):
            if getattr(settings, key) is not None:
                try:
                    setter(getattr(settings, key))
                except ValueError as e:
                    raise ConfigError(f"{where}.{key}: {e}") from None
        try:
            return cls(policy, normalizer, n_action_steps=settings.n_action_steps,
                       temporal_ensemble=settings.temporal_ensemble, embodiment=settings.embodiment)
        except ValueError as e:
            raise ConfigError(f"{where}.n_action_steps: {e}") from None

    def reset(self, env_ids: list[int] | None = None, seeds: list[int] | None = None) -> None:
        """Forget history and queued actions (of some environments, or all). ``seeds``: each
        reset env's episode seed; with every env's known, chunks are sampled reproducibly from
        (seeds, steps) (vla/seeding.py), else from the global RNG."""
        if env_ids is None:
            self._history: deque | None = None
            self._queue: list[list[np.ndarray]] = []
            self._ensemble_buf: list[list[tuple[int, np.ndarray]]] = []
            self._steps: list[int] = []
            self._fresh: set[int] = set()
            self._seeds: list[int | None] | None = None if seeds is None else list(seeds)
            return
        for k, i in enumerate(env_ids):
            self._queue[i] = []
            self._ensemble_buf[i] = []
            self._steps[i] = 0
            self._fresh.add(i)
            if self._seeds is not None:
                self._seeds[i] = None if seeds is None else seeds[k]

    # --- observation handling ----------------------------------------------------------------
    def _text_features(self, tasks: list[str]) -> dict[str, Tensor]:
        missing = [t for t in dict.fromkeys(tasks) if t not in self._text_cache]
        if missing:
            feats = self.policy.backbone.encode_text(missing)
            for i, t in enumerate(missing):
                self._text_cache[t] = {k: v[i] for k, v in feats.items()}
        return {k: torch.stack([self._text_cache[t][k] for t in tasks]) for k in self._text_cache[tasks[0]]}

    def _checked(self, obs: dict) -> tuple[dict[str, np.ndarray], Tensor]:
        """The observation's camera images (B, H, W, 3) and state (B, D_s), mapped as the
        training data was, or a ValueError naming the key that is wrong."""
        obs = self.feature_map.apply(obs)
        images = {}
        for c, pad in zip(self.policy.config.backbone.cameras, self.camera_pad):
            if pad:
                continue
            if image_key(c) not in obs:
                source = str(self.feature_map.sources_of(image_key(c))[0])
                also = f" (nor {source}, which the dataset's mapping reads it from)" if source != image_key(c) else ""
                raise ValueError(f"the observation has no {image_key(c)}{also}; it has {sorted(obs)}")
            images[c] = x = np.asarray(obs[image_key(c)])
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"{image_key(c)}: expected (B, H, W, 3) uint8 images, got shape {x.shape}")
        real = next(iter(images.values()))
        for c, pad in zip(self.policy.config.backbone.cameras, self.camera_pad):
            if pad:  # as in training: a zero image the size of a real one, its tokens masked
                images[c] = np.zeros_like(real)
        images = {c: images[c] for c in self.policy.config.backbone.cameras}
        state = torch.as_tensor(np.asarray(obs[OBS_STATE]), dtype=torch.float32, device=self.device)
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"{OBS_STATE}: expected (B, {self.state_dim}), got {tuple(state.shape)}")
        if not torch.isfinite(state).all():
            raise ValueError(f"{OBS_STATE}: non-finite values in the observation")
        return images, state

    def _frame(self, obs: dict) -> dict[str, Tensor]:
        """One control step's frame features and normalized state, (B, ...) each."""
        arrays, state = self._checked(obs)
        images = {c: torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
                  for c, x in arrays.items()}
        frame = self.policy.backbone.encode_frames(images)
        # a mixture's embodiment with a narrower state: zeros after its own, as in training
        frame[OBS_STATE] = pad_last(self.normalizer.normalize(OBS_STATE, state), self.policy.config.state_dim)
        return frame

    def _frame_needed(self) -> bool:
        """Whether this step's frame will be in the history of a coming prediction: a chunk is
        due within n_obs_steps steps for some env. Encoding only those frames skips the
        backbone on most steps (7 of 8 with one observed frame and 8 actions per chunk)."""
        if self._history is None or self.ensemble is not None:
            return True
        return min(len(q) for q in self._queue) < self.n_obs_steps

    def _push(self, frame: dict[str, Tensor]) -> None:
        b = frame[OBS_STATE].shape[0]
        if self._history is None:  # first step: repeat the first frame to fill the history
            self._history = deque([frame] * self.n_obs_steps, maxlen=self.n_obs_steps)
            self._queue = [[] for _ in range(b)]
            self._ensemble_buf = [[] for _ in range(b)]
            self._steps = [0] * b
            self._fresh = set()
            return
        self._history.append(frame)
        for i in self._fresh:  # a freshly reset env: its history is its current frame only
            for past in self._history:
                for k in past:
                    past[k] = past[k].clone()
                    past[k][i] = frame[k][i]
        self._fresh = set()

    def _observation(self, tasks: list[str]) -> dict:
        return self._assemble(list(self._history), tasks, self._steps)

    def _assemble(self, hist: list[dict[str, Tensor]], tasks: list[str], steps: list[int]) -> dict:
        """Frames oldest first -> the policy observation (B, T_o, ...)."""
        frames = {k: torch.stack([h[k] for h in hist], dim=1) for k in hist[0] if k != OBS_STATE}
        state = torch.stack([h[OBS_STATE] for h in hist], dim=1)  # (B, T_o, D_s)
        # step: control steps since each env's episode began, for policies that plan over
        # time (a behavior-token policy re-plans every N steps and starts afresh at 0)
        obs = {"frames": frames, "text": self._text_features(tasks), OBS_STATE: state, TASK: tasks,
               "step": torch.tensor(steps, device=self.device)}
        if any(self.camera_pad):
            obs[CAMERA_PAD] = torch.tensor(self.camera_pad, device=self.device).expand(len(tasks), -1)
        if self.embodiment is not None:
            b, width = len(tasks), self.policy.config.action_dim
            obs[EMBODIMENT] = torch.full((b,), self.embodiment, dtype=torch.long, device=self.device)
            obs[ACTION_DIM_PAD] = (torch.arange(width, device=self.device) >= self.action_dim).expand(b, -1)
        return obs

    # --- acting ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: dict) -> np.ndarray:
        """Batched numpy observation (keys of vla.features, leading B) -> actions (B, D_a)."""
        tasks = list(obs[TASK]) if not isinstance(obs[TASK], str) else [obs[TASK]]
        if self._frame_needed():
            self._push(self._frame(obs))
        else:
            self._checked(obs)  # bad input fails on every step, not only on those that encode
        b = len(tasks)
        need = [i for i in range(b) if self.ensemble is not None or not self._queue[i]]
        if need:
            chunk = self._predict(tasks)  # (B, H, D_a); batched over all envs for simplicity
            for i in need:
                if self.ensemble is not None:
                    self._ensemble_buf[i].append((self._steps[i], chunk[i]))
                else:
                    self._queue[i] = list(chunk[i, : self.n_action_steps])
        actions = np.stack([self._next_action(i) for i in range(b)])
        self._steps = [s + 1 for s in self._steps]
        return actions

    @torch.no_grad()
    def predict_chunk(self, history: list[dict], step: int, prefix: ChunkPrefix | None = None,
                      seed: int | None = None) -> np.ndarray:
        """Stateless chunk for asynchronous control: unbatched raw observations, oldest first
        (the last ``n_obs_steps`` are used; fewer repeat the oldest) -> (horizon, D_a) actions.
        ``seed``: the episode's; the chunk's noise then comes from (seed, step) (vla/seeding.py).

        ``step`` is the control step of the newest observation since the episode began. The
        caller decides which of the returned actions are still current when it arrives. With a
        ``prefix`` (real-time chunking, vla/chunking.py) the chunk is sampled to agree with the plan
        being executed: a policy with ``supports_guidance`` only.
        """
        recent = list(history[-self.n_obs_steps:])
        recent = [recent[0]] * (self.n_obs_steps - len(recent)) + recent
        obs = self._assemble([self._frame(batch_of_one(o)) for o in recent], [recent[-1][TASK]], [step])
        if prefix is not None:
            obs[ACTION_PREFIX] = self._action_prefix(prefix)
        with seeded(sampling_seed([seed], [step]), self.device):
            return self._sample(obs)[0]

    def _action_prefix(self, prefix: ChunkPrefix) -> ActionPrefix:
        """A raw-unit plan -> the normalized (1, H, D_a) guidance target the policy samples toward."""
        if not self.policy.supports_guidance:
            raise ValueError(f"policy {self.policy.config.name!r} cannot follow a chunk prefix (real-time chunking "
                             "needs a diffusion or flow action head)")
        if prefix.actions.shape[1] != self.action_dim:
            raise ValueError(f"chunk prefix: {prefix.actions.shape[1]} action values, the policy has {self.action_dim}")
        actions, weights = prefix.padded(self.horizon)
        target = self.normalizer.normalize(ACTION, torch.as_tensor(actions, device=self.device))
        target = pad_last(target, self.policy.config.action_dim)  # a mixture's embodiment: zeros past its dims
        return ActionPrefix(target[None], torch.as_tensor(weights, device=self.device)[None], prefix.max_guidance,
                            prefix.method)

    def _predict(self, tasks: list[str]) -> np.ndarray:
        obs = self._observation(tasks)
        seeds = self._seeds if self._seeds is not None and len(self._seeds) == len(tasks) else None
        with seeded(sampling_seed(seeds, self._steps), self.device):
            return self._sample(obs)

    def _sample(self, obs: dict) -> np.ndarray:
        """Policy observation -> unnormalized chunks (B, H, D_a)."""
        check_observation(obs, self.policy.config)
        chunk = self.policy.sample_actions(obs)[..., : self.action_dim]  # a mixture's embodiment: its own dims
        return self.normalizer.unnormalize(ACTION, chunk).float().cpu().numpy()

    def annotations(self) -> list[str] | None:
        """What the policy says it is doing, per env (e.g. a generated thought), or None."""
        return self.policy.annotations()

    def _next_action(self, i: int) -> np.ndarray:
        if self.ensemble is None:
            return self._queue[i].pop(0)
        # ACT's temporal ensembling: every chunk that covers this step votes, older ones weigh more.
        step = self._steps[i]
        self._ensemble_buf[i] = [(s, c) for s, c in self._ensemble_buf[i] if step - s < len(c)]
        return ensemble_average(np.stack([c[step - s] for s, c in self._ensemble_buf[i]]), self.ensemble)


class PolicyAgent:
    """A runtime policy driving one unbatched environment (the agent protocol of vla.data.collect)."""

    def __init__(self, runtime: RuntimePolicy):
        self.runtime = runtime

    @property
    def phase(self) -> str:
        """The sub-task label recorded with each frame: the policy's own words, if it has any."""
        said = self.runtime.annotations()
        return said[0] if said else ""

    def reset(self) -> None:
        self.runtime.reset()

    def act(self, obs: dict) -> np.ndarray:
        return self.runtime.act(batch_of_one(obs))[0]
