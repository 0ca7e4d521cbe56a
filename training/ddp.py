"""Multi-GPU training with ``torchrun``: process group, DDP wrapping, agreement across ranks.

``torchrun --nproc_per_node=N -m cluda_deploy.cli adapt ...`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; each trains on its own crops (the feed keys them by rank) and DDP
averages the student's gradients. The EMA teacher and the frozen encoder are per-process copies
of the synchronised student, so they stay equal across ranks (the teacher's BatchNorm statistics,
which are not averaged, are each rank's own, as with one GPU per batch). Rank 0 logs, evaluates
and writes checkpoints. NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cluda_deploy.inference import pick_device


@dataclass
class DistContext:
    """This process's place in the job; ``world_size == 1`` without torchrun."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # whether init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(0, 1, 0, pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    target = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return DistContext(rank, world_size, local_rank, target, owns_group=owns)


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``module`` when distributed (which also copies rank 0's weights to every rank)."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on any (e.g. a Ctrl-C seen by one process)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
