"""Reading images and split CSVs, with errors that name the file at fault."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DatasetFormatError(InputError):
    """A dataset file is missing or does not have the expected layout; `path` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class ImageReadError(InputError, OSError):
    """An image file could not be opened or decoded; `path` names it, the cause is chained."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)


def load_image(path: Path | str) -> Image.Image:
    """Loads an image fully into memory as RGB (a lazy PIL image would fail later, far from its path)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ImageReadError(path, "no such file") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error


def read_csv_rows(
    path: Path,
    *,
    min_columns: int,
    is_header: Callable[[Sequence[str]], bool],
) -> list[list[str]]:
    """Reads a split CSV whose header row is optional: the first row is dropped when `is_header` says so.

    Blank lines are skipped; any other row with fewer than `min_columns` cells raises, naming the line.
    """
    if not path.is_file():
        raise DatasetFormatError(path, "split file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        numbered = [(number, [cell.strip() for cell in row]) for number, row in enumerate(csv.reader(handle), start=1)]
    numbered = [(number, row) for number, row in numbered if any(row)]
    if numbered and is_header(numbered[0][1]):
        numbered = numbered[1:]
    for number, row in numbered:
        if len(row) < min_columns:
            raise DatasetFormatError(path, f"line {number} has {len(row)} column(s), expected at least {min_columns}: {row}")
    return [row for _, row in numbered]


def matches_header(row: Sequence[str], names: Sequence[str]) -> bool:
    """True when the leading cells of `row` are the column names `names` (case-insensitive)."""
    return len(row) >= len(names) and all(cell.lower() == name for cell, name in zip(row, names))


def require_files(paths: Sequence[Path], *, described_by: Path) -> None:
    """Raises one error listing the missing images (the first few of them), naming the CSV that lists them."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetFormatError(described_by, f"{len(missing)} listed image(s) not found: {shown}{more}")
