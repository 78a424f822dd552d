"""An exponential moving average of what training changes, and nothing else.

torch's ``AveragedModel`` deep-copies the whole module and averages every parameter at every
step. A policy's frozen backbone (a pretrained image / text encoder, or a VLM of billions of
parameters) never changes: copying it doubles its memory, and averaging it costs a pass over
all of it per step (on the 2-core CPU, `dita-cpu` trained at 5.8 instead of 6.5 steps/s,
most of its 25 M averaged parameters being the frozen encoders). This EMA shadows the
parameters that require gradients and the floating-point buffers (BatchNorm running
statistics: without them an EMA checkpoint would keep their initial values), and swaps the
averages into the live module only when asked (`applied`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * live, after every optimizer step (`update`)."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._live = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self._live.update((name, b) for name, b in module.named_buffers() if b.is_floating_point())
        self.shadow = {name: t.detach().clone() for name, t in self._live.items()}
        # the same tensors every step (the optimizer updates them in place): the lists are built once
        self._pairs = (list(self.shadow.values()), [t.detach() for t in self._live.values()])

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(*self._pairs, 1.0 - self.decay)

    def weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` (e.g. a policy's trainable_state_dict) with the averaged tensors in
        place of the live ones; entries the EMA does not track (integer buffers) stay as given."""
        return {k: self.shadow.get(k, v) for k, v in state_dict.items()}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the module holds the averaged weights; its own come back after."""
        saved = {name: t.detach().clone() for name, t in self._live.items()}
        with torch.no_grad():
            for name, t in self._live.items():
                t.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, t in self._live.items():
                    t.copy_(saved[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`, or from a checkpoint that torch's AveragedModel wrote
        (``module.<name>`` entries), so a run saved before this class resumes."""
        shadow = state["shadow"] if "shadow" in state else {
            k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(f"the saved EMA lacks {len(missing)} tensors the policy trains, e.g. {missing[0]!r}")
        with torch.no_grad():
            for name, t in self.shadow.items():
                t.copy_(shadow[name])
