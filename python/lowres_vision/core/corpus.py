"""A caption corpus, streamed: read from its files caption by caption, written once into an index's
`captions.txt` (one caption per line) while its fingerprint is computed, and read back memory-mapped.

No step holds the corpus as Python strings: a web-scale corpus (CC12M: 12M captions, COYO: 700M)
would take gigabytes that way. What stays in memory is one int64 end offset per caption (`CaptionLines`).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError

TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet")
PARQUET_BATCH_ROWS = 65_536
OFFSET_CHUNK_BYTES = 1 << 26  # captions.txt is scanned for line ends 64 MB at a time


def normalise(text: str) -> str:
    """Whitespace runs (newlines included) become one space, ends stripped: a caption fits one line of captions.txt."""
    return " ".join(text.split())


def _checked_source(path: Path | str, column: str | None) -> Path:
    """`path` if it is a readable corpus file (and, for a table, has `column`); else one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption corpus {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TABULAR_SUFFIXES:
        return path
    if column is None:
        raise InputError(f"caption corpus {path}: pass column= (--caption-column) to name the caption column of a {suffix} file")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.ParquetFile(path).schema_arrow.names
    else:
        with path.open(newline="", encoding="utf-8") as file:
            columns = csv.DictReader(file, delimiter=_delimiter(path)).fieldnames
    if columns is None or column not in columns:
        raise InputError(f"caption corpus {path}: no column {column!r} (columns: {columns})")
    return path


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _raw_texts(path: Path, column: str | None) -> Iterator[str]:
    """The texts of a checked corpus file, in file order, read row by row (a Parquet file by record batch)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
            yield from (str(value) for value in batch.column(0).to_pylist() if value is not None)
    elif suffix in TABULAR_SUFFIXES:
        with path.open(newline="", encoding="utf-8") as file:
            yield from (row[column] or "" for row in csv.DictReader(file, delimiter=_delimiter(path)))
    else:
        with path.open(encoding="utf-8") as file:
            for line in file:
                yield from line.splitlines()  # the line breaks str.splitlines knows beyond \n and \r (\x1c, \u2028, ...)


def iter_captions(path: Path | str, *, column: str | None = None) -> Iterator[str]:
    """The captions of a text file (one per line) or of a column of a CSV, TSV or Parquet file, streamed:
    whitespace collapsed, blank ones dropped. The file and column are checked before the first caption."""
    path = _checked_source(path, column)
    return (caption for caption in map(normalise, _raw_texts(path, column)) if caption)


def read_captions(path: Path | str, *, column: str | None = None) -> list[str]:
    """`iter_captions` as a list, for small corpora."""
    return list(iter_captions(path, column=column))


@dataclass(frozen=True)
class CaptionFiles:
    """A caption corpus in one or more files (see `iter_captions`), concatenated in order; checked when made."""

    paths: tuple[Path, ...]
    column: str | None = None

    def __post_init__(self) -> None:
        if not self.paths:
            raise InputError("CaptionFiles: no caption files given")
        object.__setattr__(self, "paths", tuple(_checked_source(path, self.column) for path in self.paths))

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            yield from iter_captions(path, column=self.column)


def _checked_lines(captions: Iterable[str]) -> Iterator[str]:
    """Captions given in memory are kept as given, but one holding a newline would split in captions.txt."""
    for number, caption in enumerate(captions):
        if "\n" in caption:
            raise InputError(f"caption {number} holds a newline ({caption[:60]!r}); captions.txt stores one caption per line")
        yield caption


def stream_corpus(corpus: Sequence[str] | CaptionFiles, out: Path | None = None) -> tuple[str, int]:
    """(fingerprint, number of captions) of `corpus`, writing it one caption per line to `out` when given.

    The fingerprint is the SHA-256 of the captions each followed by a newline, i.e. of captions.txt itself.
    """
    captions = iter(corpus) if isinstance(corpus, CaptionFiles) else _checked_lines(corpus)
    digest, count = hashlib.sha256(), 0
    file = out.open("wb") if out is not None else None
    try:
        with tqdm(desc="writing captions.txt" if file else "fingerprinting captions", unit="caption", unit_scale=True) as progress:
            for caption in captions:
                line = caption.encode("utf-8") + b"\n"
                digest.update(line)
                if file is not None:
                    file.write(line)
                count += 1
                if count % 10_000 == 0:
                    progress.update(10_000)
            progress.update(count % 10_000)
    finally:
        if file is not None:
            file.close()
    return digest.hexdigest(), count


class CaptionLines(Sequence[str]):
    """The captions of a captions.txt, decoded on demand from the memory-mapped file; only the line ends are held."""

    def __init__(self, path: Path) -> None:
        self._data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        # Scanned in chunks: comparing the whole file at once would allocate a byte per byte of it.
        self._ends = np.concatenate([np.zeros(0, np.int64)] + [
            start + np.flatnonzero(self._data[start : start + OFFSET_CHUNK_BYTES] == ord("\n"))
            for start in range(0, len(self._data), OFFSET_CHUNK_BYTES)
        ])

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        start = self._ends[index - 1] + 1 if index > 0 else 0
        return bytes(self._data[start : self._ends[index]]).decode("utf-8")
