"""Process-group helpers: one code path for a single process, torchrun and mp.spawn.

Launch with ``torchrun --nproc_per_node=N -m sfpn.train ...`` (multi-node: add ``--nnodes``,
``--node_rank`` and ``--rdzv_endpoint``); the process group is set up from the environment
variables torchrun exports. NCCL serves CUDA, gloo the CPU.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device: str | None = None) -> torch.device:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns this
    process's device (``cuda:<LOCAL_RANK>`` when CUDA is used, else the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), device_id=device if device.type == "cuda" else None)
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (for logging losses)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    tensor /= get_world_size()
    return dict(zip(keys, tensor.tolist()))


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copies rank 0's buffers (e.g. BatchNorm running statistics, which each DDP replica
    updates from its own batches) to every rank, so all ranks evaluate the same model."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, 0)
