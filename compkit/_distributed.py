"""DistributedDataParallel plumbing: torchrun's environment, the process group, small collectives.

Every helper also works in a single process (world size 1), so the Engine has one code path.
The environment readers import no torch, so the CLI's verbs can ask for the rank cheaply.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    """Processes in the run: torchrun's WORLD_SIZE, 1 when not launched by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine, which picks its GPU (cuda:LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine; they share its CPU cores for DataLoader workers."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Only the first process writes files and prints."""
    return rank() == 0


def start(device: torch.device) -> bool:
    """Join the process group torchrun prepared (nccl on CUDA, gloo on CPU); True if this call made it."""
    dist = _dist()
    if not is_distributed() or dist.is_initialized():
        return False
    if device.type == "cuda":
        import torch

        # NCCL's object collectives stage data on the current device, so it must be ours.
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def stop() -> None:
    """Wait for every process, then leave the process group, so no rank exits while another still talks."""
    dist = _dist()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """True when collectives must be used: more than one process and a live process group."""
    dist = _dist()
    return dist.is_initialized() and dist.get_world_size() > 1


def all_gather(value: Any) -> list[Any]:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    dist = _dist()
    if not active():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def gather_to_main(value: Any) -> list[Any] | None:
    """Every process's ``value`` in rank order on rank 0; None on the other ranks."""
    dist = _dist()
    if not active():
        return [value]
    values: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, values, dst=0)
    return values


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every process (the others pass anything, e.g. None)."""
    dist = _dist()
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_all(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a short list of numbers over all processes."""
    if not active():
        return list(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    _dist().all_reduce(tensor)
    return tensor.tolist()


def average_(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its mean over all processes (e.g. BatchNorm statistics)."""
    if not active():
        return
    for tensor in tensors:
        _dist().all_reduce(tensor)
        tensor.div_(world_size())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is True on any, so all stop together instead of hanging."""
    return sum_all([float(flag)], device)[0] > 0


def _dist() -> Any:
    """``torch.distributed``, imported on first use."""
    import torch.distributed

    return torch.distributed
