"""torch.distributed under torchrun: process group setup from RANK / WORLD_SIZE / LOCAL_RANK, rank helpers and
exact reductions. Single-process runs go through the same functions with world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fgcli.device import resolve_device
from fgcli.errors import UserError


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank, and whether a process group is up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or a compatible launcher) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_rank() -> int:
    """This process's global rank from torchrun's environment (0 outside torchrun), before init."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); pick this rank's device."""
    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if device.type == "cuda":
        if device_name.lower().startswith("cuda:"):
            raise UserError("under torchrun use --device cuda (each process takes cuda:LOCAL_RANK), not cuda:N.")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, enabled=True), device


def cleanup_distributed(info: DistInfo) -> None:
    """Tear the process group down (no-op for single-process runs)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    """Sum a tensor over ranks (returns it unchanged on a single process). Integer sums are exact."""
    if not info.enabled:
        return t
    buf = t.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if `flag` is True on any rank (every rank must call it at the same point)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    return bool(all_reduce_sum(t, info, device).item() > 0)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's Python object on every rank."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of a list, without padding (rank r takes items r, r+W, ...): every sample once."""
    return items[info.rank::info.world_size] if info.enabled else items


def all_finite(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True only if `flag` is True on every rank (so that all ranks skip a step together)."""
    return not any_rank(not flag, info, device)
