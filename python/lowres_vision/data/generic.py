"""Datasets outside LITE: an ImageFolder tree for classification, a paired CSV for retrieval."""

from __future__ import annotations

from pathlib import Path

from .io import IMAGE_EXTENSIONS, DatasetFormatError, matches_header, read_csv_rows, require_files
from .splits import ClassificationSplit, RetrievalSplit, pairs_to_retrieval_split


def load_image_folder(root: Path | str, split: str, *, class_names: tuple[str, ...] | None = None) -> ClassificationSplit:
    """`<root>/<split>/<class>/<image>`; classes are the sorted folder names of the train split.

    Passing the train split's `class_names` keeps label indices consistent when an evaluation
    split lacks some classes.
    """
    directory = Path(root) / split
    if not directory.is_dir():
        raise DatasetFormatError(directory, "split folder not found")
    if class_names is None:
        train = Path(root) / "train"
        class_names = tuple(sorted(entry.name for entry in (train if train.is_dir() else directory).iterdir() if entry.is_dir()))
    if not class_names:
        raise DatasetFormatError(directory, "no class folders")
    index_of = {name: index for index, name in enumerate(class_names)}
    paths, labels = [], []
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name not in index_of:
            raise DatasetFormatError(entry, f"class folder not among the training classes {list(class_names)[:10]}")
        for file in sorted(entry.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(file)
                labels.append(index_of[entry.name])
    if not paths:
        raise DatasetFormatError(directory, f"no images with extensions {IMAGE_EXTENSIONS}")
    return ClassificationSplit(tuple(paths), tuple(labels), tuple(class_names))


def load_paired_csv(root: Path | str, split: str, *, symmetric: bool = False) -> RetrievalSplit:
    """`<root>/<split>.csv` rows `query,gallery` (paths relative to root; header optional)."""
    root = Path(root)
    path = root / f"{split}.csv"
    rows = read_csv_rows(path, min_columns=2, is_header=lambda row: matches_header(row, ("query", "gallery")))
    pairs = [(root / query, root / gallery) for query, gallery, *_ in rows]
    require_files([file for pair in pairs for file in pair], described_by=path)
    return pairs_to_retrieval_split(pairs, symmetric=symmetric)
