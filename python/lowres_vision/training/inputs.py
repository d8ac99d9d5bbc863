"""What a run reads: transforms, the class names, the training dataset (with generated images) and
the endless stream of label-breaking pairs."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..errors import InputError
from ..data import (ClassificationDataset, EpochSeededDataset, PairDataset, RetrievalSplit, batch_mixing, eval_transform, is_retrieval,
                    load_split, seeded_rngs, train_transform)
from .distributed import Distributed, ResumableDistributedSampler

def transforms(preprocess: dict[str, Any], augment: bool, random_erasing: float = 0.0):
    options = {"mean": preprocess["mean"], "std": preprocess["std"]}
    train = train_transform(preprocess["image_size"], augment=augment, random_erasing=random_erasing, **options)
    return train, eval_transform(preprocess["image_size"], **options)


MIXING_STREAM = 7  # keeps the batch-mixing seeds apart from the per-sample (seed, epoch, index) ones


class BatchMixing:
    """MixUp and/or CutMix (data.batch_mixing) of classification batches (images, labels, *weights):
    the labels become soft targets [B, K], which weighted_cross_entropy takes; a sample weight stays
    with its row. The draw of a step is seeded by (seed, step, rank), so a resumed run mixes exactly
    as an uninterrupted one; under DDP each rank mixes within its part of the batch."""

    def __init__(self, mix, seed: int) -> None:
        self.mix, self.seed = mix, seed

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: Optional[int]) -> Optional["BatchMixing"]:
        """The mixing cfg asks for (None without mixup/cutmix or without classes)."""
        mix = None if num_classes is None else batch_mixing(num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix)
        return None if mix is None else cls(mix, cfg.seed)

    def __call__(self, batch, step: int, rank: int):
        images, labels, *rest = batch
        with seeded_rngs(self.seed, MIXING_STREAM, step, rank):
            images, targets = self.mix(images, labels)
        return (images, targets, *rest)

def check_splits(cfg: TrainConfig, splits) -> None:
    """Every split a run will read is there and holds images: refused before training, not after."""
    for name in dict.fromkeys(splits):
        if len(load_split(cfg.task, cfg.data_root, name)) == 0:
            raise InputError(f"{cfg.task} in {cfg.data_root}: the {name} split holds no images")


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
        raise InputError(f"augment_manifest {cfg.augment_manifest}: no (label-breaking, partner) pairs listed")
    dataset = EpochSeededDataset(pairs, cfg.seed + 1)
    sampler = ResumableDistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, seed=cfg.seed + 1)
    per_pass = math.ceil(sampler.num_samples / cfg.batch_size)
    epoch, step = divmod(start_step, per_pass)
    while True:
        sampler.set_position(epoch, step * cfg.batch_size)
        dataset.set_epoch(epoch)
        yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
        epoch, step = epoch + 1, 0
