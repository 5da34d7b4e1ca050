"""Data-parallel training inside one run: one process per GPU with ``torch.distributed`` (DDP).

A run becomes distributed when it is launched as several processes that agree on a rendezvous:

- ``torchrun --nproc-per-node 8 -m runners.run ...`` (torchrun exports RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT), or
- a submitit job with ``tasks_per_node > 1`` (``runners.sweep --gpus-per-task 8``): each task reads its
  rank from the job environment (Slurm or submitit's local executor) and exports the same variables.

The recipe's batch size stays the *global* batch: each of the ``world_size`` ranks trains on
``batch_size / world_size`` images of the same deterministic sample stream (``DeterministicSampler`` with
``rank``/``world_size``), and DDP averages the gradients, so the optimisation is the single-process one,
only faster. Rank 0 alone writes checkpoints, logs and the result record.

Without any of this (plain ``python -m runners.run``) everything here is a no-op: rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

BACKEND_ENV = "DGSS_DIST_BACKEND"  # override the backend (default: nccl on CUDA, gloo on CPU)
FIND_UNUSED_ENV = "DGSS_DDP_FIND_UNUSED"  # "0": trust that every trainable parameter gets a gradient


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_submitit_environment() -> None:
    """Inside a multi-task submitit job, export torchrun's variables (rank, world size, rendezvous)."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # keep CUDA_VISIBLE_DEVICES: each rank picks its device by local rank (init_from_environment)
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_from_environment(backend: str | None = None, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment; a no-op (rank 0 of 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return info()
    _export_submitit_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info()


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())


def rank() -> int:
    return info().rank


def world_size() -> int:
    return info().world_size


def is_main() -> bool:
    return info().is_main


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. creates a cache), the other ranks after it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_mean(values: Tensor) -> Tensor:
    """Mean over ranks of a tensor (identity in a single process)."""
    if world_size() == 1:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _TrainingStep(nn.Module):
    """DDP synchronises gradients for what runs through ``forward``: route ``training_step`` through it."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.method.training_step(images, labels)


def sync_trainable_batchnorm(module: nn.Module) -> int:
    """Replace every *trained* BatchNorm layer of ``module`` by a SyncBatchNorm with the same state (in
    place); frozen ones (eval mode, running statistics) stay as they are. Returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm) \
                    and child.weight is not None and child.weight.requires_grad:
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats).to(child.weight.device)
                sync.load_state_dict(child.state_dict())
                sync.train(child.training)
                setattr(parent, name, sync)
                replaced += 1
    return replaced


def ddp_training_step(method: nn.Module, device: torch.device) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    """``method.training_step`` wrapped in DistributedDataParallel (gradients averaged over ranks).

    Parameters that some step does not use (auxiliary heads, frozen-by-schedule parts) are allowed
    unless ``$DGSS_DDP_FIND_UNUSED=0``. On CUDA, trained BatchNorm layers become SyncBatchNorm: their
    statistics are over the global batch, as in a single-GPU run of the recipe (FAMix: batch 8 on one GPU,
    so 8 GPUs at 1 image each normalise like the official run).
    """
    find_unused = os.environ.get(FIND_UNUSED_ENV, "1") != "0"
    device_ids = None
    if device.type == "cuda":
        sync_trainable_batchnorm(method)
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(_TrainingStep(method), device_ids=device_ids,
                                               find_unused_parameters=find_unused)


def probe() -> dict[str, Any]:
    """Diagnostic job: join the process group of this launch and all-reduce the ranks.

    ``submitit`` with ``tasks_per_node=N`` (or torchrun) should answer ``world_size == N`` and
    ``rank_sum == N * (N - 1) / 2`` on every rank.
    """
    current = init_from_environment()
    total = torch.tensor([float(current.rank)])
    if current.world_size > 1:
        dist.all_reduce(total)
    out = {"rank": current.rank, "world_size": current.world_size, "rank_sum": int(total.item()),
           "backend": dist.get_backend() if current.world_size > 1 else None}
    cleanup()
    return out
