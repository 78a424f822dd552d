"""A training budget in steps, wall-clock seconds, or both (whichever runs out first).

Side-by-side comparisons give every candidate the same minutes of training, not the same
steps (a step of one policy can cost ten of another's). A learning-rate schedule written in
steps (warmup, then cosine decay to the last step) then needs to know where the end is: after
warmup, its progress is the larger of the fraction of steps done and the fraction of the
remaining time used, so the decay completes when the budget does, whichever limit binds.
Without a time limit this is exactly the step schedule.

The clock counts training only (the loop), carries over a resume, and starts at the first step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class Budget:
    def __init__(self, steps: int, max_seconds: float | None = None, warmup_steps: int = 0):
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.steps, self.max_seconds, self.warmup_steps = steps, max_seconds, warmup_steps
        self._before = 0.0           # seconds trained before this process (a resumed run)
        self._started: float | None = None
        self._warm_at: float | None = None  # elapsed seconds when warmup ended

    # --- the clock -----------------------------------------------------------------------------
    def start(self) -> None:
        self._started = time.monotonic()

    def elapsed(self) -> float:
        return self._before + (time.monotonic() - self._started if self._started is not None else 0.0)

    def exhausted(self, step: int) -> str | None:
        """Why training must stop before ``step + 1`` ("steps" or "time"), or None."""
        if step >= self.steps:
            return "steps"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return "time"
        return None

    def bar_total(self) -> int | None:
        """A progress bar's total: the steps, or None (a count and a rate) when time binds."""
        return self.steps if self.max_seconds is None else None

    def left(self) -> str:
        """Training time left, for a progress bar ("" without a time limit)."""
        if self.max_seconds is None:
            return ""
        seconds = max(self.max_seconds - self.elapsed(), 0.0)
        return f"{int(seconds // 60)}:{int(seconds % 60):02d} left"

    # --- the schedule --------------------------------------------------------------------------
    def virtual_step(self, step: int) -> int:
        """The step a steps-only schedule should be evaluated at: ``step`` itself during warmup
        and without a time limit; after warmup, the point as far through the remaining steps
        as the run is through its remaining time, if that is further."""
        if self.max_seconds is None or step < self.warmup_steps:
            return step
        if self._warm_at is None:
            self._warm_at = self.elapsed()
        span = max(self.steps - self.warmup_steps, 1)
        by_steps = (step - self.warmup_steps) / span
        by_time = (self.elapsed() - self._warm_at) / max(self.max_seconds - self._warm_at, 1e-9)
        return self.warmup_steps + round(min(max(by_steps, by_time), 1.0) * span)

    def scheduler(self, optimizer: torch.optim.Optimizer, step_lambda: Callable[[int], float]):
        """A LambdaLR that evaluates a steps-only schedule's factor (``step_lambda``, e.g. a
        diffusers scheduler's ``lr_lambdas[0]``) at `virtual_step`."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step_lambda(self.virtual_step(step)))

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed(), "warm_at": self._warm_at}

    def load_state_dict(self, state: dict) -> None:
        self._before, self._warm_at = float(state.get("elapsed", 0.0)), state.get("warm_at")
        self._started = None
