"""torch Datasets over loaded splits, and per-sample seeding that makes data order-independent."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import load_transformed
from .splits import ClassificationSplit, RetrievalSplit

Transform = Callable[[object], torch.Tensor]


class ClassificationDataset(Dataset):
    """(image, label) pairs; `paths`, `labels` and `class_names` are those of the split."""

    def __init__(self, split: ClassificationSplit, transform: Transform) -> None:
        self.split, self.transform = split, transform
        self.paths, self.labels, self.class_names = split.paths, split.labels, split.class_names

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_transformed(self.paths[index], self.transform), self.labels[index]


class PairDataset(Dataset):
    """One item per gallery image of a retrieval split: (one of its queries, the gallery image).

    Several queries may share a gallery image (historic maps: the old maps of one satellite image).
    Item i draws one of gallery image i's queries, so an epoch holds every gallery image once and
    no batch holds a gallery image twice, as its own negative; the authors' release does the same
    (repository xiaobai1217/Low-Resource-Vision, file scripts/dataloader_maps.py). The draw is a
    function of (seed, epoch, index); call `set_epoch` before each epoch.
    """

    def __init__(self, split: RetrievalSplit, transform: Transform, seed: int = 0) -> None:
        self.split, self.transform, self.seed, self.epoch = split, transform, seed, 0
        queries: list[list[Path]] = [[] for _ in split.gallery_paths]
        for query, index in zip(split.query_paths, split.ground_truth):
            queries[index].append(query)
        # (gallery image, its queries in split order); a gallery image no query matches is no training pair.
        self.items = [(gallery, tuple(found)) for gallery, found in zip(split.gallery_paths, queries) if found]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def pair(self, index: int, rng: np.random.Generator | None = None) -> tuple[Path, Path]:
        """(query, gallery image) paths of item `index` this epoch; `rng` (default: seeded by seed, epoch
        and index) draws the query, so that a wrapper can draw more from the same stream."""
        gallery, queries = self.items[index]
        if len(queries) == 1:
            return queries[0], gallery
        rng = np.random.default_rng([self.seed, self.epoch, index]) if rng is None else rng
        return queries[int(rng.integers(len(queries)))], gallery

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        query, gallery = self.pair(index)
        return load_transformed(query, self.transform), load_transformed(gallery, self.transform)


class ImageListDataset(Dataset):
    """Images of a list of paths (a retrieval split's queries or gallery, for embedding)."""

    def __init__(self, paths: Sequence[Path], transform: Transform) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_transformed(self.paths[index], self.transform)


@contextlib.contextmanager
def seeded_rngs(*key: int) -> Iterator[None]:
    """Seeds the torch (CPU), Python and NumPy generators from `key` and restores them afterwards."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class EpochSeededDataset(Dataset):
    """Makes the random augmentation of sample i in epoch e a function of (seed, e, i) alone.

    The same sample then gets the same pixels whichever process, worker or position in the
    batch order loads it: a resumed run, a run with more workers and a DDP run all see
    exactly the data of an uninterrupted single-process run. Call `set_epoch` before each epoch
    (before the DataLoader iterator is created, so that workers receive it).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):  # e.g. PairDataset, AugmentedDataset: their choices are per epoch too
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with seeded_rngs(self.seed, self.epoch, index):
            return self.dataset[index]
