"""GeNIe's hard negatives in the training set.

GeNIe (arXiv 2312.02548, Sec. 2) appends the images it generates to the training set, each labelled
with the target class its prompt named; the downstream classifier is then trained on the union.
`WithHardNegatives` is that union: the task's training samples, then every GeNIe (or GeNIe-Ada)
image a manifest lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..data import DatasetFormatError, load_transformed
from .cache import read_manifest


class WithHardNegatives(Dataset):
    """`base`'s samples (indices 0..len(base)-1), then the GeNIe images of `manifest_path`.

    A hard negative yields `(image, target label)`, or `(image, target label, 1.0)` when `weighted`
    (the base yields per-sample loss weights; a hard negative counts fully, as in the paper). Labels
    are checked against `class_names`: a manifest made from another dataset is refused, not mixed in.
    `sample_kind(i)` says what sample i is ("genie", or the base's kind).
    """

    def __init__(self, base, manifest_path: Path | str, class_names: Sequence[str], *, weighted: bool) -> None:
        manifest_path = Path(manifest_path)
        if not manifest_path.is_file():
            raise FileNotFoundError(f"genie_manifest {manifest_path} not found")
        entries = [entry for entry in read_manifest(manifest_path) if entry["kind"] == "genie"]
        if not entries:
            raise DatasetFormatError(manifest_path, "genie_manifest lists no GeNIe images (augment with --modes genie)")
        for entry in entries:
            label = entry["label"]
            if not (isinstance(label, int) and 0 <= label < len(class_names)):
                raise DatasetFormatError(manifest_path, f"label {label!r} of {entry['path']} is not a class index "
                                                        f"of this task ({len(class_names)} classes)")
            if entry.get("label_name", class_names[label]) != class_names[label]:
                raise DatasetFormatError(manifest_path, f"{entry['path']} is labelled {entry['label_name']!r} but "
                                                        f"class {label} of this task is {class_names[label]!r}")
        self.base, self.weighted, self.transform = base, weighted, base.transform
        self.paths = [manifest_path.parent / entry["path"] for entry in entries]
        self.labels = [entry["label"] for entry in entries]

    def __len__(self) -> int:
        return len(self.base) + len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def sample_kind(self, index: int) -> str:
        if index >= len(self.base):
            return "genie"
        return self.base.sample_kind(index) if hasattr(self.base, "sample_kind") else "original"

    def __getitem__(self, index: int):
        if index < len(self.base):
            return self.base[index]
        negative = index - len(self.base)
        image, label = load_transformed(self.paths[negative], self.transform), self.labels[negative]
        return (image, label, torch.tensor(1.0)) if self.weighted else (image, label)
