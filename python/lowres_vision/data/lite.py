"""Loaders for the three LITE tasks (layout in the package docstring, `lowres_vision.data`)."""

from __future__ import annotations

from pathlib import Path

from .io import DatasetFormatError, matches_header, read_csv_rows, require_files
from .splits import ClassificationSplit, RetrievalSplit, pairs_to_retrieval_split

SPLITS = ("train", "val", "test")
CIRCUIT_IMAGE_EXTENSIONS = (".png", ".jpeg", ".jpg")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def load_circuit_classes(root: Path | str) -> tuple[list[int], list[str]]:
    """`circuits/label_map.csv` -> (label ids, class names), sorted by id; row i is class index i."""
    path = Path(root) / "circuits" / "label_map.csv"
    rows = read_csv_rows(path, min_columns=2, is_header=lambda row: not _is_int(row[0]))
    for row in rows:
        if not _is_int(row[0]):
            raise DatasetFormatError(path, f"label id {row[0]!r} is not an integer")
    entries = sorted((int(row[0]), row[1]) for row in rows)
    ids = [label_id for label_id, _ in entries]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(path, "duplicate label ids")
    return ids, [name for _, name in entries]


def _resolve_circuit_image(data_dir: Path, filename: str) -> Path:
    # Filenames normally carry their extension; files saved under another of the three are still found.
    path = data_dir / filename
    if path.is_file() or path.suffix.lower() in CIRCUIT_IMAGE_EXTENSIONS:
        return path
    for extension in CIRCUIT_IMAGE_EXTENSIONS:
        if (candidate := path.with_name(path.name + extension)).is_file():
            return candidate
    return path


def load_circuits(root: Path | str, split: str) -> ClassificationSplit:
    _check_split(split)
    root = Path(root)
    label_ids, class_names = load_circuit_classes(root)
    index_of = {label_id: index for index, label_id in enumerate(label_ids)}
    path = root / "circuits" / f"{split}_5_shots.csv"
    rows = read_csv_rows(path, min_columns=3, is_header=lambda row: not _is_int(row[2]))
    paths, labels = [], []
    for row in rows:
        if not _is_int(row[2]) or int(row[2]) not in index_of:
            raise DatasetFormatError(path, f"label {row[2]!r} of {row[1]!r} is not an id in circuits/label_map.csv")
        paths.append(_resolve_circuit_image(root / "circuits" / "data", row[1]))
        labels.append(index_of[int(row[2])])
    require_files(paths, described_by=path)
    return ClassificationSplit(tuple(paths), tuple(labels), tuple(class_names))


def load_historic_maps(root: Path | str, split: str) -> RetrievalSplit:
    """Each old map queries the gallery of the split's unique satellite images."""
    _check_split(split)
    directory = Path(root) / "historic-maps"
    path = directory / f"{split}.csv"
    rows = read_csv_rows(path, min_columns=2, is_header=lambda row: matches_header(row, ("today_satellite_img", "old_map_img")))
    images = directory / "Satellite"
    pairs = [(images / old_map, images / satellite) for satellite, old_map, *_ in rows]
    require_files([file for pair in pairs for file in pair], described_by=path)
    return pairs_to_retrieval_split(pairs)


def load_mechanical_drawing(root: Path | str, split: str) -> RetrievalSplit:
    """Drawing `{id}-a.png` <-> render `{id}-b.png`, evaluated in both directions."""
    _check_split(split)
    directory = Path(root) / "mechanical-drawing"
    path = directory / f"{split}.csv"
    images = directory / "data"

    def is_header(row: list[str]) -> bool:
        # A column title ("id", "model_id") has no digits and no image; real ids are kept even when
        # their image is missing, so that the missing file is reported rather than skipped.
        return not any(character.isdigit() for character in row[0]) and not (images / f"{row[0]}-a.png").is_file()

    ids = [row[0] for row in read_csv_rows(path, min_columns=1, is_header=is_header)]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(path, "duplicate ids")
    pairs = [(images / f"{item}-a.png", images / f"{item}-b.png") for item in ids]
    require_files([file for pair in pairs for file in pair], described_by=path)
    return pairs_to_retrieval_split(pairs, symmetric=True)
