"""Distributed set-up: the process group under torchrun, the resumable sharded sampler, rank means."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..config import TrainConfig

@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this call initialised the process group and must tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

def init_distributed(cfg: TrainConfig) -> Distributed:
    """Joins the process group of torchrun (WORLD_SIZE > 1) or of a caller that already made one."""
    device = torch.device(cfg.resolved_device())
    joined = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if joined else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and device.type == "cuda" and device.index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        if local_rank is None and not joined:
            raise RuntimeError("train: WORLD_SIZE > 1 on CUDA needs LOCAL_RANK (launch with torchrun)")
        index = int(local_rank) if local_rank is not None else dist.get_rank() % torch.cuda.device_count()
        device = torch.device("cuda", index)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # set_device needs an index
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL initialises, so each rank binds its own GPU
    owns_group = world_size > 1 and not joined
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank() if world_size > 1 else 0, world_size, device, owns_group)

class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler (seeded per-epoch permutation, rank r takes every world-size-th index)
    that can start an epoch part-way through, at the sample a checkpoint recorded."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"sampler start_index {start_index} outside [0, {self.num_samples}]")
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def reduce_step(loss: torch.Tensor, counts: list[int], world_size: int) -> tuple[float, list[int]]:
    """A step's loss averaged and its sample counts summed over ranks, in one collective (float64 holds
    the counts exactly). Every rank gets the same loss, so all stop or skip a non-finite step together."""
    if world_size == 1:
        return float(loss.detach()), counts
    stats = torch.cat([loss.detach().reshape(1).double(), torch.tensor(counts, dtype=torch.float64, device=loss.device)])
    dist.all_reduce(stats)
    return float(stats[0]) / world_size, [int(count) for count in stats[1:].tolist()]
