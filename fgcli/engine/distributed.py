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


@dataclass(frozen=True)
class Backend:
    """How this rank talks to the others: the process-group backend and the device ids DDP is given."""

    name: str  # "nccl" on CUDA, "gloo" on CPU
    device_ids: list[int] | None  # [this rank's GPU] on CUDA, None on CPU (DDP's rule for CPU modules)
    device_id: torch.device | None  # the device init_process_group binds (CUDA only)


def backend_for(device: torch.device) -> Backend:
    """The one place that decides backend and device ids: NCCL + this GPU on CUDA, gloo on CPU. Nothing else
    differs between the two paths."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return Backend("nccl", [index], torch.device("cuda", index))
    return Backend("gloo", None, None)


def ddp_options(method_leaves_unused: bool, find_unused_parameters: bool) -> dict[str, bool]:
    """DDP's graph options for a run: `find_unused_parameters` when the method's configuration leaves
    parameters without gradients (HERBS with a loss weight at 0) or `train.find_unused_parameters=true` asks
    for it; otherwise off (every parameter gets a gradient every step, the fast path). Never `static_graph`:
    it breaks gradient accumulation (DDP's `no_sync`; an internal assert in the reducer, tested)."""
    return {"find_unused_parameters": bool(method_leaves_unused or find_unused_parameters), "static_graph": False}


#: device types whose tensors torch's SyncBatchNorm can synchronise (it refuses CPU tensors)
SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")


def check_sync_bn(device: torch.device) -> None:
    """`train.sync_bn` under torchrun: refuse devices whose tensors SyncBatchNorm cannot synchronise (before any
    work, instead of a ValueError at the first training step)."""
    if device.type not in SYNC_BN_DEVICES:
        raise UserError(f"train.sync_bn=true needs GPUs: torch's SyncBatchNorm cannot synchronise {device.type} "
                        "tensors. Drop --set train.sync_bn=true (each process then normalises its own batch).")


def convert_sync_bn(model: torch.nn.Module) -> torch.nn.Module:
    """`train.sync_bn`: every batch-norm layer of `model` synchronised across the processes (in place).

    timm's converter, not torch's: torch's turns timm's BatchNormAct2d (norm + activation in one layer, e.g. in
    EfficientNet) into a plain SyncBatchNorm and silently drops the activation; timm's keeps it
    (SyncBatchNormAct). Parameters and buffers are the same tensors, so optimizer and state-dict keys stay valid.
    """
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False,
             static_graph: bool = False) -> torch.nn.Module:
    """`model` in DistributedDataParallel with the device ids of `backend_for(device)`."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=backend_for(device).device_ids,
                                   find_unused_parameters=find_unused_parameters, static_graph=static_graph)


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
        backend = backend_for(device)
        dist.init_process_group(backend=backend.name, device_id=backend.device_id)
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


def gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's Python object, in rank order, on every rank ([obj] on a single process)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
