"""Datasets that feed the generated images to training (the LITE paper, arXiv:2401.04716, Sec. 3.1;
the release's values).

`AugmentedDataset` (classification) and `AugmentedPairDataset` (retrieval) replace an original image
by one of its label-preserving images with probability `replace_prob` (0.3) and then weight its task
loss by `replaced_weight` (0.65); `BreakingPairs` gives the (label-breaking image, positive partner)
pairs of the contrastive loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import PairDataset, load_transformed
from .cache import file_sha256, read_manifest


def _resolve(manifest_path: Path, entry: dict) -> Path:
    return manifest_path.parent / entry["path"]


def _check_replace_prob(replace_prob: float) -> None:
    if not 0.0 <= replace_prob <= 1.0:
        raise ValueError(f"replace_prob must be in [0, 1], got {replace_prob}")


class PreservingImages:
    """The label-preserving images of a manifest, looked up by their source file's content.

    Sources are matched by content hash, so the manifest stays valid when the dataset moves.
    """

    def __init__(self, manifest_path: Path | str) -> None:
        manifest_path = Path(manifest_path)
        self.by_source: dict[str, list[Path]] = {}
        for entry in read_manifest(manifest_path):
            if entry["kind"] == "preserving":
                self.by_source.setdefault(entry["source_sha256"], []).append(_resolve(manifest_path, entry))

    def of(self, path: Path) -> list[Path]:
        """The label-preserving images generated from the file at `path`, in a fixed order (maybe none)."""
        return sorted(self.by_source.get(file_sha256(path), []))


class AugmentedDataset(Dataset):
    """Wraps `base` (yielding `(image, label)`, with `.paths` and `.transform`) to yield `(image, label, weight)`.

    Item i of epoch e is replaced by a label-preserving image of the same source file with
    probability `replace_prob`, then weighted `replaced_weight` (otherwise 1.0). The choice is a
    function of (seed, epoch, index) alone, so workers, resumes and DDP ranks agree; call
    `set_epoch` before each epoch. The label is always the base dataset's.
    """

    def __init__(self, base, manifest_path: Path | str, *, replace_prob: float = 0.3,
                 replaced_weight: float = 0.65, seed: int = 0) -> None:
        _check_replace_prob(replace_prob)
        for attribute in ("paths", "transform"):
            if not hasattr(base, attribute):
                raise TypeError(f"base dataset {type(base).__name__} has no `.{attribute}`")
        if len(base.paths) != len(base):
            raise ValueError(f"base dataset has {len(base)} items but {len(base.paths)} paths")
        self.base, self.replace_prob, self.replaced_weight, self.seed = base, replace_prob, replaced_weight, seed
        self.transform = base.transform
        self.epoch = 0
        # Per base item, its label-preserving images (empty: never replaced).
        preserving = PreservingImages(manifest_path)
        self.augmentations = [preserving.of(path) for path in base.paths]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def replacement(self, index: int) -> Path | None:
        """The label-preserving image that stands in for item `index` this epoch, or None."""
        choices = self.augmentations[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        replaced = rng.random() < self.replace_prob
        if not replaced or not choices:
            return None
        return choices[int(rng.integers(len(choices)))]

    def sample_kind(self, index: int) -> str:
        """"preserving" if item `index` is replaced this epoch, else "original"."""
        return "original" if self.replacement(index) is None else "preserving"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        replacement = self.replacement(index)
        if replacement is None:
            image, label = self.base[index]
            return image, label, torch.tensor(1.0)
        # `.labels` spares decoding the original just to read its label.
        label = self.base.labels[index] if hasattr(self.base, "labels") else self.base[index][1]
        return load_transformed(replacement, self.transform), label, torch.tensor(self.replaced_weight)


class AugmentedPairDataset(Dataset):
    """Wraps a `PairDataset` to yield `(query, gallery image, weight)`, as the authors' release does for
    retrieval (repository xiaobai1217/Low-Resource-Vision, files scripts/dataloader_maps.py and
    scripts/dataloader_mechanical.py).

    With probability `replace_prob` one side of item i's pair is replaced by one of its label-preserving
    images and the pair weighted `replaced_weight` (otherwise 1.0): the query (the old map: the release
    keeps the satellite image original) or, for a symmetric split (drawing <-> render), either side with
    equal chance. A side without label-preserving images stays original, with weight 1.0. The choices
    are a function of (seed, epoch, index); the query of item i is the one the base draws (see
    `PairDataset`). Call `set_epoch` before each epoch.
    """

    def __init__(self, base: PairDataset, manifest_path: Path | str, *, replace_prob: float = 0.3,
                 replaced_weight: float = 0.65, seed: int = 0) -> None:
        _check_replace_prob(replace_prob)
        self.base, self.replace_prob, self.replaced_weight, self.seed = base, replace_prob, replaced_weight, seed
        self.symmetric = base.split.symmetric
        self.transform = base.transform
        self.epoch = 0
        preserving = PreservingImages(manifest_path)
        images = {path for gallery, queries in base.items for path in (gallery, *queries)}
        self.augmentations = {path: preserving.of(path) for path in images}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def pair(self, index: int) -> tuple[Path, Path, bool]:
        """(query, gallery image, replaced) of item `index` this epoch: whether a label-preserving image stands in for one."""
        rng = np.random.default_rng([self.seed, self.epoch, index])  # one stream: the base's query draw, then ours
        pair = list(self.base.pair(index, rng))
        if not rng.random() < self.replace_prob:
            return pair[0], pair[1], False
        side = int(self.symmetric and rng.random() < 0.5)
        choices = self.augmentations[pair[side]]
        if not choices:
            return pair[0], pair[1], False
        pair[side] = choices[int(rng.integers(len(choices)))]
        return pair[0], pair[1], True

    def sample_kind(self, index: int) -> str:
        """"preserving" if a label-preserving image stands in for one side of item `index` this epoch, else "original"."""
        return "preserving" if self.pair(index)[2] else "original"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query, gallery, replaced = self.pair(index)
        weight = self.replaced_weight if replaced else 1.0
        return load_transformed(query, self.transform), load_transformed(gallery, self.transform), torch.tensor(weight)


class BreakingPairs(Dataset):
    """(label-breaking image, its positive partner) tensor pairs listed in a manifest."""

    def __init__(self, manifest_path: Path | str, transform: Callable) -> None:
        manifest_path = Path(manifest_path)
        entries = read_manifest(manifest_path)
        breaking = {entry["key"]: entry for entry in entries if entry["kind"] == "breaking"}
        self.pairs = [
            (_resolve(manifest_path, breaking[entry["partner_of"]]), _resolve(manifest_path, entry))
            for entry in entries if entry["kind"] == "partner" and entry.get("partner_of") in breaking
        ]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        breaking, partner = self.pairs[index]
        return load_transformed(breaking, self.transform), load_transformed(partner, self.transform)
