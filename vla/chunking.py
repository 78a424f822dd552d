"""How chunks are stitched together at run time, torch-free (the robot side of `vla deploy` uses it):
which planned action runs at which step when chunks arrive late (:class:`ActionSchedule`), ACT's
temporal ensembling, and what real-time chunking (RTC, Black et al. 2025) makes the next chunk
agree with.

While a chunk executes, the next one is computed from a newer observation. Inference takes d
control steps, so the first d actions of the new chunk are for steps that the *current* plan
executes meanwhile: they are already decided. RTC samples the new chunk conditioned on the
current plan (guided denoising, :mod:`vla.heads.guidance`), so it continues what the arm is
doing instead of jumping to a different mode at the switch:

    current plan    c c c c c c c c c c c c          (from step k0; the arm is at step k)
    next chunk              n n n n n n n n n n n n n n n n     observed at step k
    weights                 1 1 1 1 w w w w 0 0 0 0 0 0 0 0     d = 4 frozen, then decaying to the
                                                                end of the current plan

The weights follow the paper's soft mask: 1 on the d frozen actions, an exponential decay over
the rest of the overlap (so the chunk may still correct course), 0 where the current plan has
nothing to say. This module is numpy only: a robot-side client (``deploy.server``) builds the
prefix without torch, and the policy server conditions on it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

# How a chunk is made to agree with the plan: RTC's guidance, a vector-Jacobian product through
# the model at every denoising step, or inpainting of the clean estimate (the Jacobian taken as
# the identity: no backward pass, no extra time) (both vla/heads/guidance.py); or, for a policy
# trained with committed actions (policy.rtc_train_max_delay, vla/heads/committed.py), the frozen
# actions as its input ("condition": training-time RTC, no extra time either).
METHODS = ("guidance", "inpaint", "condition")
# Which planned actions the next chunk is pulled towards: the paper's soft mask (the frozen ones,
# then a decay over the rest of the overlap), or only the frozen ones (its "hard masking" ablation;
# the chunk's later actions then follow the new observation alone).
MASKS = ("soft", "hard")


def ensemble_average(preds: np.ndarray, coefficient: float) -> np.ndarray:
    """ACT's temporal ensembling: predictions for one step, oldest first (N, D_a) -> (D_a,);
    prediction i weighs exp(-coefficient * i), so older ones weigh more."""
    weights = np.exp(-coefficient * np.arange(len(preds)))
    return (weights[:, None] * preds).sum(0) / weights.sum()


def prefix_weights(delay: int, overlap: int, horizon: int, mask: str = "soft") -> np.ndarray:
    """(horizon,) guidance weights: 1 for the first ``delay`` actions, then ``c * (e^c - 1) / (e - 1)``
    with ``c`` falling linearly from 1 towards 0 over the rest of the ``overlap`` actions the
    current plan covers, and 0 after it (the paper's exponential soft mask, Eq. 5); with
    ``mask="hard"``, 0 right after the frozen actions."""
    overlap = max(0, min(overlap, horizon))
    delay = max(0, min(delay, overlap))
    w = np.zeros(horizon, dtype=np.float32)
    w[:delay] = 1.0
    n = overlap - delay
    if n > 0 and mask == "soft":
        c = (overlap - np.arange(delay, overlap)) / (n + 1)  # n values in (0, 1), falling
        w[delay:overlap] = c * np.expm1(c) / (math.e - 1)
    return w


@dataclass
class ChunkPrefix:
    """The current plan as seen from the step the next chunk is observed at (raw action units).

    ``actions`` (n, D_a): what the plan executes at steps k, k+1, ..., k+n-1 (n <= horizon);
    ``delay``: how many of them will run before the next chunk arrives (its frozen part);
    ``max_guidance``: the cap on the guidance weight (RTC's beta); ``method``: one of ``METHODS``;
    ``mask``: one of ``MASKS``.
    """

    actions: np.ndarray
    delay: int
    max_guidance: float = 5.0
    method: str = "guidance"
    mask: str = "soft"

    def __post_init__(self):
        self.actions = np.asarray(self.actions, dtype=np.float32)
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"a chunk prefix needs (n >= 1, D_a) actions, got shape {self.actions.shape}")
        if not np.isfinite(self.actions).all():
            raise ValueError("a chunk prefix holds non-finite actions")
        if self.delay < 0:
            raise ValueError(f"a chunk prefix's delay must be >= 0, got {self.delay}")
        if not self.max_guidance > 0:
            raise ValueError(f"a chunk prefix's max_guidance must be > 0, got {self.max_guidance}")
        if self.method not in METHODS:
            raise ValueError(f"a chunk prefix's method is {self.method!r}; expected one of {list(METHODS)}")
        if self.mask not in MASKS:
            raise ValueError(f"a chunk prefix's mask is {self.mask!r}; expected one of {list(MASKS)}")

    def padded(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(horizon, D_a) actions, zeros past the plan, and their (horizon,) weights."""
        n = min(len(self.actions), horizon)
        actions = np.zeros((horizon, self.actions.shape[1]), dtype=np.float32)
        actions[:n] = self.actions[:n]
        return actions, prefix_weights(self.delay, n, horizon, self.mask)

    def to_wire(self) -> dict:
        return {"actions": self.actions, "delay": int(self.delay), "max_guidance": float(self.max_guidance),
                "method": self.method, "mask": self.mask}

    @classmethod
    def from_wire(cls, message: dict | None) -> ChunkPrefix | None:
        if message is None:
            return None
        try:
            return cls(np.asarray(message["actions"]), int(message["delay"]), float(message["max_guidance"]),
                       str(message["method"]), str(message["mask"]))
        except (KeyError, TypeError) as e:
            raise ValueError("a chunk prefix needs 'actions', 'delay', 'max_guidance', 'method' and 'mask': "
                             f"{e}") from None


class ActionSchedule:
    """Which action runs at which control step, given chunks that arrive late. Pure numpy."""

    def __init__(self, horizon: int, n_action_steps: int, ensemble: float | None = None):
        self.horizon, self.n_action_steps, self.ensemble = horizon, n_action_steps, ensemble
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (step of its observation, (H, D))
        self.stale_skipped = 0

    def add(self, start: int, chunk: np.ndarray, now: int) -> None:
        """A chunk planned from step `start`'s observation, arriving at step `now`."""
        if self.ensemble is None:
            self.chunks.clear()  # the newest plan replaces the old one
        self.chunks.append((start, chunk))
        self.stale_skipped += min(max(now - start, 0), len(chunk))
        while self.chunks and self.chunks[0][0] + self.horizon <= now:
            self.chunks.popleft()

    def _live(self, step: int) -> list[tuple[int, np.ndarray]]:
        """The chunks that plan ``step``, oldest first."""
        return [(s, c) for s, c in self.chunks if s <= step < s + len(c)]

    def action(self, step: int) -> np.ndarray | None:
        live = self._live(step)
        if not live:
            return None
        if self.ensemble is None:
            s, c = live[-1]
            return c[step - s]
        return ensemble_average(np.stack([c[step - s] for s, c in live]), self.ensemble)

    def source(self, step: int) -> int | None:
        """The observation step of the chunk that plans ``step`` (the newest one covering it)."""
        live = self._live(step)
        return live[-1][0] if live else None

    def plan(self, step: int) -> np.ndarray | None:
        """The newest chunk's actions from ``step`` on (n, D), or None when it plans nothing there."""
        if not self.chunks:
            return None
        s, c = self.chunks[-1]
        return c[step - s:] if s <= step < s + len(c) else None

    def needs_chunk(self, step: int, lead: int) -> bool:
        """Start inferring now so a chunk lands before this one's n_action_steps run out."""
        if not self.chunks:
            return True
        if self.ensemble is not None:
            return True  # re-plan back to back
        start = self.chunks[-1][0]
        return step - start >= self.n_action_steps - lead
