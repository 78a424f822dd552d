"""Single-process or torchrun (DDP) training, behind one small object.

``torchrun --nproc_per_node N -m vla.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything runs in one process. NCCL on CUDA, gloo on CPU (multi-node works
the same way through torchrun's rendezvous arguments).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vla.errors import ConfigError


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} requested but CUDA is not available; use device=cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r} is not a torch device; use auto, cpu, cuda or cuda:<index>") from None


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, device: str = "auto") -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local)
        if world > 1 and not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, dev)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def agree(self, reason: str | None) -> str | None:
        """Rank 0's answer to "stop now, and why?" for every rank: a wall-clock budget runs out
        at slightly different steps on each rank, and DDP needs them to stop together."""
        if not self.enabled:
            return reason
        codes = [None, "steps", "time"]
        flag = torch.tensor([codes.index(reason)], device=self.device)
        dist.broadcast(flag, src=0)
        return codes[int(flag.item())]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
