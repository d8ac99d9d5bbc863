"""What a run reads: transforms, the class names, the training dataset (with generated images) and
the endless stream of label-breaking pairs."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data import ClassificationDataset, EpochSeededDataset, PairDataset, RetrievalSplit, is_retrieval, load_split, train_transform, eval_transform
from .distributed import Distributed, ResumableDistributedSampler

def transforms(preprocess: dict[str, Any], augment: bool):
    options = {"mean": preprocess["mean"], "std": preprocess["std"]}
    return train_transform(preprocess["image_size"], augment=augment, **options), eval_transform(preprocess["image_size"], **options)

def task_class_names(cfg: TrainConfig) -> Optional[tuple[str, ...]]:
    if is_retrieval(cfg.task):
        return None
    split = load_split(cfg.task, cfg.data_root, "train")
    return split.class_names

def train_dataset(cfg: TrainConfig, transform) -> torch.utils.data.Dataset:
    """The train split's items; with an augment manifest, label-preserving images stand in for some originals."""
    split = load_split(cfg.task, cfg.data_root, "train")
    if isinstance(split, RetrievalSplit):
        dataset = PairDataset(split, transform, seed=cfg.seed)
    else:
        dataset = ClassificationDataset(split, transform)
    if cfg.augment_manifest is not None:
        from ..augment.data import AugmentedDataset, AugmentedPairDataset

        augmented = AugmentedPairDataset if isinstance(split, RetrievalSplit) else AugmentedDataset
        dataset = augmented(dataset, cfg.augment_manifest, replace_prob=cfg.replace_prob,
                            replaced_weight=cfg.replaced_weight, seed=cfg.seed)
    if cfg.genie_manifest is not None:
        from ..augment.hard_negatives import WithHardNegatives

        dataset = WithHardNegatives(dataset, cfg.genie_manifest, split.class_names,
                                    weighted=cfg.augment_manifest is not None)
    return dataset

def sample_kinds(dataset, indices) -> list[str]:
    """The kind of each of the training samples `indices` (original, preserving or genie), as `dataset` says."""
    if not hasattr(dataset, "sample_kind"):
        return ["original"] * len(indices)
    return [dataset.sample_kind(index) for index in indices]

def breaking_pair_batches(cfg: TrainConfig, transform, context: Distributed, start_step: int):
    """An endless iterator of (label-breaking, partner) image batches, batch s at optimizer step s.

    The pairs are cycled in seeded per-pass permutations (sharded over ranks like the task data);
    starting at `start_step` resumes exactly where a checkpoint left off.
    """
    from ..augment.data import BreakingPairs

    pairs = BreakingPairs(cfg.augment_manifest, transform)
    if len(pairs) == 0:
        raise ValueError(f"augment_manifest {cfg.augment_manifest}: no (label-breaking, partner) pairs listed")
    dataset = EpochSeededDataset(pairs, cfg.seed + 1)
    sampler = ResumableDistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, seed=cfg.seed + 1)
    per_pass = math.ceil(sampler.num_samples / cfg.batch_size)
    epoch, step = divmod(start_step, per_pass)
    while True:
        sampler.set_position(epoch, step * cfg.batch_size)
        dataset.set_epoch(epoch)
        yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
        epoch, step = epoch + 1, 0
