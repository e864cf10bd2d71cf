"""DistributedDataParallel for the training loop: one process per device under ``torchrun``.

``torchrun --nproc_per_node N ...`` starts N copies of the command with RANK, WORLD_SIZE and
LOCAL_RANK (and MASTER_ADDR/MASTER_PORT) in their environment. Without them (a plain run) there is
one process and nothing here does anything: no process group, no wrapping, no collectives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from models.train import common


def process_rank() -> int:
    """This process's rank under torchrun (0 in a plain run): only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Processes:
    """The training processes this one belongs to (torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
        return cls(rank=process_rank(), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that evaluates, prints and writes files."""
        return self.rank == 0

    def start(self, requested: str | None) -> tuple[torch.device, bool]:
        """This process's device (a distributed CUDA run: cuda:LOCAL_RANK) and whether the
        process group was started here (NCCL on CUDA, gloo on the CPU); returns (device, started)."""
        device = common.pick_device(requested)
        if not self.distributed:
            return device, False
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if dist.is_initialized():
            return device, False
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device, True

    def wrap(
        self, networks: Mapping[str, nn.Module], device: torch.device, options: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, nn.Module]:
        """Each network in DistributedDataParallel (with its ``options``) when distributed, else as it is."""
        if not self.distributed:
            return dict(networks)
        ids = [device.index] if device.type == "cuda" else None
        return {
            name: nn.parallel.DistributedDataParallel(net, device_ids=ids, **options.get(name, {}))
            for name, net in networks.items()
        }

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """``values`` averaged over the processes (each ran as many steps)."""
        if not self.distributed or not values:
            return values
        total = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return {key: float(v) / self.world_size for key, v in zip(values, total.tolist())}

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, modules: list[nn.Module]) -> None:
        """Copy rank 0's buffers (batch-norm statistics) to every process, so that all hold one state."""
        if not self.distributed:
            return
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def seed_apart(self, seed: int) -> None:
        """Ranks above 0 draw their own random numbers (latents, augmentation, dropout) from
        here on; rank 0 keeps the stream a one-process run has."""
        if self.rank > 0:
            common.seed_everything(seed + self.rank)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def close(started: bool) -> None:
    """Destroy the process group if ``Processes.start`` created it."""
    if started and dist.is_initialized():
        dist.destroy_process_group()
