"""Reproducible sampling at run time: each chunk's noise is drawn from a generator seeded by the
episode's seed and the control step, so the same checkpoint on the same episode seeds samples the
same chunks again (an evaluation reruns to the same number; two settings compare episode by
episode instead of noise against noise). The global RNG is left as it was.

Without a seed (a real arm, an env reset without one) sampling draws from the global RNG as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def sampling_seed(seeds: Sequence[int | None] | None, steps: Sequence[int]) -> int | None:
    """One 64-bit seed for a batch's chunks from each env's (episode seed, step); None without
    seeds or if any env has no episode seed."""
    if not seeds or any(s is None for s in seeds):
        return None
    words = [int(v) for pair in zip(seeds, steps) for v in pair]
    if any(w < 0 for w in words):  # SeedSequence takes non-negative entropy; a negative seed is still a seed
        words = [w & 0xFFFFFFFFFFFFFFFF for w in words]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw from a generator seeded with ``seed`` inside, the global RNG untouched outside;
    ``seed=None``: the global RNG, as usual."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
