"""Running an agent (typically a scripted expert) in an env and recording its episodes.

    env = envs.tabletop.make_env("lift")
    expert = envs.tabletop.experts.make_expert("lift", env)
    with EpisodeRecorder.for_env(env, root="data/lift") as rec:
        stats = collect(env, expert, rec, n_episodes=50)

Attempt k resets the env with ``seed + k``, so a collection is reproducible and a later run
with ``seed`` past the last attempt adds new scenes rather than repeats.

``workers`` > 1 runs whole attempts in that many spawned subprocesses, each with its own env
and agent; results are recorded in attempt order, so the dataset holds the same episodes as a
serial collection (rendering dominates an expert's episode, so two workers on two cores
collect nearly twice as fast).

``action_noise`` perturbs what is executed, not what is recorded (DART, Laskey et al. 2017):
a scripted expert is so consistent that its demos never leave the ideal path, and a policy
cloned from them has never seen how to come back once its own small errors push it off. With
noise the expert's corrections from perturbed states become training labels.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from vla.data.recorder import EpisodeRecorder

logger = logging.getLogger(__name__)


class Agent(Protocol):
    """What `collect` drives. An optional ``phase: str`` attribute, read after each ``act``,
    labels the sub-task that chose the action (recorded as ``annotation.phase``); an optional
    ``reseed(seed)`` is called with each attempt's seed, for agents that draw random numbers;
    an optional ``execute(action)`` returns what to run in the env instead of the recorded
    action (a scripted expert injecting a mistake it then recovers from)."""

    def reset(self) -> None: ...

    def act(self, obs: dict) -> np.ndarray: ...


class RandomAgent:
    """Uniform samples of the action space (``collect.agent=random``): a baseline, and data for
    envs that have no scripted expert. Seeded, so a collection is reproducible."""

    phase = None

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def reseed(self, seed: int) -> None:
        self.action_space.seed(seed)  # per attempt: the same episodes whichever worker runs it

    def reset(self) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        return np.asarray(self.action_space.sample())


@dataclass
class CollectStats:
    episodes_saved: int
    attempts: int      # episodes run
    successes: int     # attempts that ended with info["is_success"]
    frames: int        # frames saved
    seconds: float     # wall time of the whole collection

    @property
    def success_rate(self) -> float:
        """Successes per attempt (0 when nothing ran)."""
        return self.successes / self.attempts if self.attempts else 0.0


def collect(
    env: gym.Env,
    agent: Agent,
    recorder: EpisodeRecorder,
    n_episodes: int,
    *,
    success_only: bool = True,
    seed: int = 0,
    max_attempts: int | None = None,
    action_noise: float = 0.0,
    noise_dims: list[int] | None = None,
    progress: bool = True,
    workers: int = 1,
    make_env_and_agent: Callable[[], tuple[gym.Env, Agent]] | None = None,
) -> CollectStats:
    """Run ``agent`` in ``env`` until ``n_episodes`` episodes are saved to ``recorder``.

    Each step records (observation, action, agent.phase); an episode ends when the env
    terminates or truncates, and succeeded if the last step's ``info["is_success"]`` is true.
    With ``success_only`` failed attempts are discarded (nothing of them is written).
    ``max_attempts`` (None: 10 * n_episodes, so a broken agent cannot loop forever) bounds
    the attempts; when it runs out, fewer episodes are saved and a warning is logged.
    ``action_noise`` > 0 adds Gaussian noise of that standard deviation to the executed action
    (on ``noise_dims``, default all; clipped to the action space) while the agent's own action
    is what gets recorded. ``workers`` > 1 needs ``make_env_and_agent``, a picklable function
    that builds a fresh (env, agent) pair in each worker process.
    """
    perturb = _Perturbation(env.action_space, action_noise, noise_dims)
    if workers > 1:
        if make_env_and_agent is None:
            raise ValueError("collecting with several workers needs make_env_and_agent")
        attempts = _ParallelAttempts(workers, make_env_and_agent, recorder, action_noise, noise_dims)
    else:
        attempts = _SerialAttempts(env, agent, recorder, perturb)
    max_attempts = 10 * n_episodes if max_attempts is None else max_attempts
    stats = CollectStats(episodes_saved=0, attempts=0, successes=0, frames=0, seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(total=n_episodes, desc="collecting", unit="episode", disable=not progress)
    with bar, attempts:
        while stats.episodes_saved < n_episodes and stats.attempts < max_attempts:
            # The most attempts that may still be needed: no wasted work when every one succeeds.
            wanted = min(n_episodes - stats.episodes_saved, max_attempts - stats.attempts)
            success, frames = attempts.record(seed, stats.attempts, wanted)
            stats.attempts += 1
            stats.successes += success
            bar.set_postfix(success=f"{stats.success_rate:.0%} ({stats.successes}/{stats.attempts})", refresh=False)
            if success or not success_only:
                recorder.save_episode()
                stats.episodes_saved += 1
                stats.frames += frames
                bar.update(1)
            else:
                recorder.discard_episode()
                bar.refresh()
    stats.seconds = time.perf_counter() - start
    if stats.episodes_saved < n_episodes:
        logger.warning("saved %d of %d episodes in %d attempts (success rate %.0f%%)",
                       stats.episodes_saved, n_episodes, stats.attempts, 100 * stats.success_rate)
    return stats


def check_action_noise(space: gym.Space, std: float, dims: list[int] | None) -> list[int]:
    """Validate a noise setting against an action space; returns the dims to perturb.
    Errors start with the parameter's name (``action_noise`` / ``noise_dims``)."""
    if not (std >= 0 and np.isfinite(std)):
        raise ValueError(f"action_noise must be a finite standard deviation >= 0, got {std}")
    size = int(np.prod(space.shape)) if space.shape else 0
    dims = list(range(size)) if dims is None else list(dims)
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise ValueError(f"noise_dims {bad} out of range for a {size}-D action space")
    return dims


class _Perturbation:
    """Executed action = recorded action + N(0, std^2) on some dims, clipped to the action space."""

    def __init__(self, space: gym.Space, std: float, dims: list[int] | None):
        self.dims = check_action_noise(space, std, dims)
        self.std, self.low, self.high = std, getattr(space, "low", None), getattr(space, "high", None)
        self.rng: np.random.Generator | None = None  # set per episode by reseed()

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)  # the same attempt seed gives the same noise

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if not self.std:
            return action
        executed = np.array(action, dtype=np.float64, copy=True)
        executed[self.dims] += self.std * self.rng.standard_normal(len(self.dims))
        if self.low is not None:
            executed = np.clip(executed, self.low, self.high)
        return executed.astype(np.asarray(action).dtype)


def run_episode(env: gym.Env, agent: Agent, seed: int, perturb: _Perturbation,
                on_frame: Callable[[dict, np.ndarray, str | None], None]) -> tuple[bool, int]:
    """One episode from ``env.reset(seed=seed)``; every (observation, agent's action, phase) goes
    to ``on_frame``, and ``perturb(agent.execute(action))`` is what runs. Returns (success, frames)."""
    obs, info = env.reset(seed=seed)
    agent.reset()
    if hasattr(agent, "reseed"):
        agent.reseed(seed)
    perturb.reseed(seed)
    frames, done = 0, False
    while not done:
        action = agent.act(obs)
        on_frame(obs, action, getattr(agent, "phase", None))
        executed = agent.execute(action) if hasattr(agent, "execute") else action
        obs, _, terminated, truncated, info = env.step(perturb(executed))
        frames += 1
        done = terminated or truncated
    return bool(info.get("is_success", False)), frames


class _SerialAttempts:
    """Attempts run here, streaming frames into the recorder's episode buffer."""

    def __init__(self, env, agent, recorder, perturb):
        self.env, self.agent, self.recorder, self.perturb = env, agent, recorder, perturb

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self, seed: int, attempt: int, wanted: int) -> tuple[bool, int]:
        return run_episode(self.env, self.agent, seed + attempt, self.perturb, self.recorder.add_frame)


class _ParallelAttempts:
    """Attempts run in spawned worker processes; finished episodes enter the recorder's buffer
    in attempt order. Up to two attempts per worker are in flight, never more than ``wanted``."""

    def __init__(self, workers: int, make_env_and_agent, recorder, action_noise: float, noise_dims):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.recorder, self.workers = recorder, workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker,
                                        initargs=(make_env_and_agent, action_noise, noise_dims))
        self.pending: deque = deque()  # futures of the submitted attempts not yet recorded, oldest first
        self.next_attempt = 0  # the first attempt not yet submitted

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        return False

    def record(self, seed: int, attempt: int, wanted: int) -> tuple[bool, int]:
        while len(self.pending) < min(2 * self.workers, wanted):
            self.pending.append(self.pool.submit(_worker_episode, seed + self.next_attempt))
            self.next_attempt += 1
        success, frames = self.pending.popleft().result()
        for obs, action, phase in frames:
            self.recorder.add_frame(obs, action, phase)
        return success, len(frames)


_WORKER: tuple | None = None  # (env, agent, perturbation) of this worker process


def _init_worker(make_env_and_agent, action_noise: float, noise_dims) -> None:
    global _WORKER
    env, agent = make_env_and_agent()
    _WORKER = (env, agent, _Perturbation(env.action_space, action_noise, noise_dims))


def _worker_episode(seed: int) -> tuple[bool, list]:
    env, agent, perturb = _WORKER
    frames = []

    def keep(obs, action, phase):  # copies: an env may reuse its observation buffers
        frames.append(({k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in obs.items()},
                       np.array(action), phase))

    success, _ = run_episode(env, agent, seed, perturb, keep)
    return success, frames
