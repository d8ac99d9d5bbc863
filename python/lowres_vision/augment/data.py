"""Datasets that feed the generated images to training (the LITE paper, arXiv:2401.04716, Sec. 3.1;
the release's values).

`AugmentedDataset` replaces an original image by one of its label-preserving images with
probability 0.3 and then weights its task loss by 0.65; `BreakingPairs` gives the (label-breaking
image, positive partner) pairs of the contrastive loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import load_image
from .cache import file_sha256, read_manifest


def _resolve(manifest_path: Path, entry: dict) -> Path:
    return manifest_path.parent / entry["path"]


class AugmentedDataset(Dataset):
    """Wraps `base` (yielding `(image, label)`, with `.paths` and `.transform`) to yield `(image, label, weight)`.

    Item i of epoch e is replaced by a label-preserving image of the same source file with
    probability `replace_prob`, then weighted `replaced_weight` (otherwise 1.0). The choice is a
    function of (seed, epoch, index) alone, so workers, resumes and DDP ranks agree; call
    `set_epoch` before each epoch. Sources are matched by content hash, so the manifest stays
    valid when the dataset moves. The label is always the base dataset's.
    """

    def __init__(self, base, manifest_path: Path | str, *, replace_prob: float = 0.3,
                 replaced_weight: float = 0.65, seed: int = 0) -> None:
        if not 0.0 <= replace_prob <= 1.0:
            raise ValueError(f"replace_prob must be in [0, 1], got {replace_prob}")
        for attribute in ("paths", "transform"):
            if not hasattr(base, attribute):
                raise TypeError(f"base dataset {type(base).__name__} has no `.{attribute}`")
        if len(base.paths) != len(base):
            raise ValueError(f"base dataset has {len(base)} items but {len(base.paths)} paths")
        manifest_path = Path(manifest_path)
        by_source: dict[str, list[Path]] = {}
        for entry in read_manifest(manifest_path):
            if entry["kind"] == "preserving":
                by_source.setdefault(entry["source_sha256"], []).append(_resolve(manifest_path, entry))
        self.base, self.replace_prob, self.replaced_weight, self.seed = base, replace_prob, replaced_weight, seed
        self.transform = base.transform
        self.epoch = 0
        # Per base item, its label-preserving images in manifest order (empty: never replaced).
        self.augmentations = [sorted(by_source.get(file_sha256(path), [])) for path in base.paths]

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
        return self.transform(load_image(replacement)), label, torch.tensor(self.replaced_weight)


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
        return self.transform(load_image(breaking)), self.transform(load_image(partner))
