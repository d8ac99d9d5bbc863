"""An on-disk caption index: captions embedded in two spaces and searched with faiss.

Layout of an index directory:

    captions.txt          one caption per line (the corpus, newlines inside captions replaced by spaces)
    meta.json             corpus fingerprint, encoder names, widths, batch size, index kinds
    progress.json         rows embedded so far (the resume point of an interrupted build)
    <space>.npy           [num_captions, dim] float32, L2-normalised, memory-mappable
    <space>.faiss         the inner-product faiss index over <space>.npy

Two spaces: "vlm" holds the VLM text encoder's embeddings (image->text search, and the caption
embeddings CoRE mixes into both branches), "text" holds the text-to-text encoder's embeddings
(class prompt -> caption search). A build writes the embeddings batch by batch and records
progress only after a batch is flushed to disk, so a build killed at any point resumes from the
last completed batch when it is run again with the same corpus and encoders.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .encoders import TextEncoder

VLM_SPACE = "vlm"
TEXT_SPACE = "text"
SPACES = (VLM_SPACE, TEXT_SPACE)
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
# Below this many captions an exact search is fast enough (a 100k x 1152 float32 scan is ~0.5 GB).
FLAT_INDEX_MAX_CAPTIONS = 100_000
HNSW_NEIGHBOURS = 32
# Release: near-duplicate captions among the k retrieved ones are dropped above this cosine.
DUPLICATE_COSINE = 0.94


def read_captions(path: Path | str, *, column: str | None = None) -> list[str]:
    """A caption corpus: a text file with one caption per line, or a column of a CSV or Parquet file.

    Blank captions are dropped; newlines inside a caption become spaces (the index stores one per line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption corpus {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        if column is None:
            raise ValueError(f"caption corpus {path}: pass column= to name the caption column of a {suffix} file")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=[column])
            texts = [str(value) for value in table.column(column).to_pylist() if value is not None]
        else:
            with path.open(newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file, delimiter="\t" if suffix == ".tsv" else ",")
                if reader.fieldnames is None or column not in reader.fieldnames:
                    raise ValueError(f"caption corpus {path}: no column {column!r} (columns: {reader.fieldnames})")
                texts = [row[column] or "" for row in reader]
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    captions = [" ".join(text.split()) for text in texts]
    return [caption for caption in captions if caption]


def _fingerprint(captions: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for caption in captions:
        digest.update(caption.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _write_json_atomically(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def _resolve_index_kind(kind: str, num_captions: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {kind!r}")
    if kind == "auto":
        return "flat" if num_captions <= FLAT_INDEX_MAX_CAPTIONS else "ivf"
    return kind


def build_faiss_index(embeddings: np.ndarray, kind: str, *, chunk_rows: int = 65536, seed: int = 0):
    """An inner-product faiss index over L2-normalised rows (so scores are cosines).

    "flat" is exact; "ivf" clusters into ~4·sqrt(n) lists (k-means on a sample of at most 256 rows
    per list); "hnsw" is a graph index with 32 neighbours per node. Rows are added in chunks so a
    memory-mapped array is never read whole.
    """
    import faiss

    num_rows, dim = embeddings.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        num_lists = max(1, min(num_rows // 39, int(4 * math.sqrt(num_rows))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, num_lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(num_rows, size=min(num_rows, 256 * num_lists), replace=False)
        index.train(np.ascontiguousarray(embeddings[np.sort(sample)], dtype=np.float32))
    else:
        raise ValueError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {kind!r}")
    for start in range(0, num_rows, chunk_rows):
        index.add(np.ascontiguousarray(embeddings[start : start + chunk_rows], dtype=np.float32))
    return index


def _read_faiss_index(path: Path):
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        # Index types without memory-mapping support in this faiss build are read into memory.
        return faiss.read_index(str(path))


def build_caption_index(
    captions: Sequence[str],
    directory: Path | str,
    *,
    vlm_encoder: TextEncoder,
    text_encoder: TextEncoder,
    batch_size: int = 256,
    index_kind: str = "auto",
) -> "CaptionIndex":
    """Embeds `captions` with both encoders into `directory` and builds the faiss indices.

    Re-running on a directory that holds an unfinished build of the same corpus and encoders
    continues after the last completed batch; a finished one is loaded (and re-indexed from its
    stored embeddings when another `index_kind` is asked for).
    """
    captions = list(captions)
    if not captions:
        raise ValueError("build_caption_index: the caption corpus is empty")
    if batch_size < 1:
        raise ValueError(f"build_caption_index: batch_size must be >= 1, got {batch_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_path, progress_path = directory / "meta.json", directory / "progress.json"
    encoders = {VLM_SPACE: vlm_encoder, TEXT_SPACE: text_encoder}
    meta = {
        "num_captions": len(captions),
        "fingerprint": _fingerprint(captions),
        "encoders": {space: encoder.name for space, encoder in encoders.items()},
        "batch_size": batch_size,
        "index_kind": _resolve_index_kind(index_kind, len(captions)),
    }
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        for key in ("fingerprint", "encoders", "batch_size"):
            if existing.get(key) != meta[key]:
                raise ValueError(
                    f"build_caption_index: {directory} holds an index built with another {key} "
                    f"({existing.get(key)!r} vs {meta[key]!r}); use a new directory or delete it"
                )
        meta["dims"] = existing.get("dims", {})
        if existing.get("complete"):
            if existing["index_kind"] != meta["index_kind"]:
                # The embeddings are the expensive part: only the faiss indices are rebuilt.
                _write_faiss_indices(directory, meta)
            return CaptionIndex.load(directory)
    else:
        (directory / "captions.txt").write_text("".join(caption + "\n" for caption in captions), encoding="utf-8")
        meta["dims"] = {}
        _write_json_atomically(meta_path, meta)

    rows_done = json.loads(progress_path.read_text())["rows_done"] if progress_path.is_file() else 0
    arrays: dict[str, np.ndarray] = {
        space: np.load(directory / f"{space}.npy", mmap_mode="r+") for space in meta["dims"] if rows_done > 0
    }
    starts = range(rows_done, len(captions), batch_size)
    with tqdm(total=len(captions), initial=rows_done, desc="embedding captions", unit="caption") as progress:
        for start in starts:
            batch = captions[start : start + batch_size]
            for space, encoder in encoders.items():
                embeddings = encoder.encode(batch).detach().float().cpu().numpy()
                if embeddings.shape[0] != len(batch):
                    raise ValueError(f"{encoder.name} returned {embeddings.shape[0]} embeddings for {len(batch)} captions")
                if space not in arrays:
                    meta["dims"][space] = int(embeddings.shape[1])
                    arrays[space] = np.lib.format.open_memmap(
                        directory / f"{space}.npy", mode="w+", dtype=np.float32, shape=(len(captions), embeddings.shape[1])
                    )
                if embeddings.shape[1] != arrays[space].shape[1]:
                    raise ValueError(
                        f"{encoder.name} gives {embeddings.shape[1]}-d embeddings but the '{space}' space of "
                        f"{directory} holds {arrays[space].shape[1]}-d ones"
                    )
                arrays[space][start : start + len(batch)] = embeddings
                arrays[space].flush()
            if start == 0:
                _write_json_atomically(meta_path, meta)
            _write_json_atomically(progress_path, {"rows_done": start + len(batch)})
            progress.update(len(batch))

    _write_faiss_indices(directory, meta)
    return CaptionIndex.load(directory)


def _write_faiss_indices(directory: Path, meta: dict) -> None:
    """Indexes the finished embeddings of both spaces with `meta["index_kind"]`, then marks the build complete."""
    import faiss

    for space in SPACES:
        index = build_faiss_index(np.load(directory / f"{space}.npy", mmap_mode="r"), meta["index_kind"])
        faiss.write_index(index, str(directory / f"{space}.faiss"))
    _write_json_atomically(directory / "meta.json", {**meta, "complete": True})


class CaptionLines(Sequence[str]):
    """The captions of an index, decoded on demand from the memory-mapped captions.txt.

    A web-scale corpus (CC12M: 12M captions) would take gigabytes as Python strings; only the
    line offsets are held in memory.
    """

    def __init__(self, path: Path) -> None:
        self._data = np.memmap(path, dtype=np.uint8, mode="r")
        self._ends = np.flatnonzero(self._data == ord("\n"))
        self._starts = np.concatenate([[0], self._ends[:-1] + 1])

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return bytes(self._data[self._starts[index] : self._ends[index]]).decode("utf-8")


@dataclass
class Retrieved:
    """The captions retrieved for a batch of queries, best first; padding has id -1 and mask False."""

    ids: np.ndarray  # [queries, k] int64
    scores: np.ndarray  # [queries, k] float32 cosine similarities
    mask: np.ndarray  # [queries, k] bool

    def caption_lists(self, captions: Sequence[str]) -> list[list[tuple[str, float]]]:
        return [
            [(captions[i], float(s)) for i, s, keep in zip(ids, scores, mask) if keep]
            for ids, scores, mask in zip(self.ids, self.scores, self.mask)
        ]


class CaptionIndex:
    """A finished caption index directory, memory-mapped (see the module docstring)."""

    def __init__(self, directory: Path, meta: dict, captions: Sequence[str], embeddings: dict, indices: dict) -> None:
        self.directory, self.meta, self.captions = directory, meta, captions
        self._embeddings, self._indices = embeddings, indices

    @classmethod
    def load(cls, directory: Path | str, *, nprobe: int | None = None, ef_search: int = 128) -> "CaptionIndex":
        """Opens an index; `nprobe` (IVF, default 1/8 of the lists) and `ef_search` (HNSW) trade speed for recall."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a caption index (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if not meta.get("complete"):
            raise RuntimeError(f"the caption index in {directory} is unfinished; run build_caption_index again to resume it")
        captions = CaptionLines(directory / "captions.txt")
        embeddings = {space: np.load(directory / f"{space}.npy", mmap_mode="r") for space in SPACES}
        indices = {space: _read_faiss_index(directory / f"{space}.faiss") for space in SPACES}
        for index in indices.values():
            if hasattr(index, "nlist"):
                index.nprobe = nprobe if nprobe is not None else max(1, index.nlist // 8)
            if hasattr(index, "hnsw"):
                index.hnsw.efSearch = ef_search
        return cls(directory, meta, captions, embeddings, indices)

    def __len__(self) -> int:
        return len(self.captions)

    def dim(self, space: str) -> int:
        return self.embeddings(space).shape[1]

    def embeddings(self, space: str) -> np.ndarray:
        """[num_captions, dim] memory-mapped caption embeddings of `space`."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        return self._embeddings[space]

    def search(self, space: str, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` captions by inner product -> (scores [q, k] float32, ids [q, k] int64, -1 where none)."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        dim = self.dim(space)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(
                f"search: queries of shape {tuple(queries.shape)} do not match the '{space}' space of "
                f"{self.directory}, which holds {dim}-d embeddings (expected [num_queries, {dim}])"
            )
        if k < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        return self._indices[space].search(queries, min(k, len(self)))

    def retrieve(
        self, space: str, queries: torch.Tensor | np.ndarray, k: int = 10, *, duplicate_threshold: float | None = DUPLICATE_COSINE
    ) -> Retrieved:
        """`search`, then drop every caption whose cosine to a better-ranked kept one exceeds the threshold."""
        scores, ids = self.search(space, queries, k)
        mask = ids >= 0
        if duplicate_threshold is not None and ids.size:
            vectors = np.asarray(self.embeddings(space)[np.where(mask, ids, 0).ravel()]).reshape(*ids.shape, -1)
            similar = np.einsum("qid,qjd->qij", vectors, vectors) > duplicate_threshold
            # Greedy in rank order: a caption survives unless it is too close to a surviving better one.
            for column in range(1, ids.shape[1]):
                mask[:, column] &= ~(mask[:, :column] & similar[:, :column, column]).any(axis=1)
        return Retrieved(ids=np.where(mask, ids, -1), scores=np.where(mask, scores, -np.inf).astype(np.float32), mask=mask)
