"""Process-group helpers: rank and world size (1 and 0 without a process group), barriers, gathering
Python objects and averaging scalar dicts across processes."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes (nothing in a single process). With NCCL it names this process's
    GPU, so the barrier does not guess a device (and create a context on GPU 0)."""
    if get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather(item) -> list:
    """Every process's ``item`` (any picklable object), in rank order."""
    if get_world_size() == 1:
        return [item]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, item)
    return gathered


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalar tensors averaged over processes (for logging: every rank gets the mean)."""
    if get_world_size() == 1 or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return dict(zip(names, stacked))
