"""An on-disk caption index: captions embedded in two spaces and searched with faiss.

Layout of an index directory:

    captions.txt          one caption per line (the corpus, newlines inside captions replaced by spaces)
    meta.json             corpus fingerprint, encoder names, batch and shard sizes, index settings; once
                          complete, per space the index chosen, its tuned search settings and measured recall
    progress/<shard>.json rows of each shard embedded so far (the resume point of an interrupted build)
    <space>.npy           [num_captions, dim] float32, L2-normalised, memory-mappable
    <space>.faiss         the inner-product faiss index over <space>.npy (+ <space>.faiss.ivfdata, the
                          memory-mapped inverted lists of an IVF index)

Two spaces: "vlm" holds the VLM text encoder's embeddings (image->text search, and the caption
embeddings CoRE mixes into both branches), "text" holds the text-to-text encoder's embeddings
(class prompt -> caption search). Embedding is sharded across ranks and resumable (`shards`);
the index is chosen under a memory budget, built shard by shard and tuned to a recall target (`ann`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic_files import write_json
from ..errors import InputError
from .ann import DEFAULT_MAX_INDEX_MEMORY, INDEX_KINDS, build_index, parse_memory, plan_index, read_index
from .recall import DEFAULT_RECALL_TARGET, SearchSettings, search_reranked, verify_search
from .encoders import TextEncoder
from .shards import (
    DEFAULT_SHARD_ROWS, create_exclusively, embed_shards, rank_and_world, shard_ranges, shards_done, wait_until,
)

VLM_SPACE = "vlm"
TEXT_SPACE = "text"
SPACES = (VLM_SPACE, TEXT_SPACE)
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


def build_caption_index(
    captions: Sequence[str],
    directory: Path | str,
    *,
    vlm_encoder: TextEncoder,
    text_encoder: TextEncoder,
    batch_size: int = 256,
    index_kind: str = "auto",
    max_index_memory: str | int = DEFAULT_MAX_INDEX_MEMORY,
    recall_target: float = DEFAULT_RECALL_TARGET,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    rank: int | None = None,
    world_size: int | None = None,
) -> "CaptionIndex":
    """Embeds `captions` with both encoders into `directory` and builds the faiss indices.

    `index_kind="auto"` searches exactly up to 100k captions and with a product-quantised IVF index
    sized to `max_index_memory` above; its search is tuned to 10-recall@10 >= `recall_target` (see
    `ann`). Re-running on a directory that holds an unfinished build of the same corpus and encoders
    continues after the last completed batch of each shard; a finished one is loaded (and re-indexed
    from its stored embeddings when other index settings are asked for). With several ranks each
    embeds its shards, rank 0 waits for all of them and builds the index, and every rank returns it.
    """
    captions = list(captions)
    if not captions:
        raise ValueError("build_caption_index: the caption corpus is empty")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if value < 1:
            raise InputError(f"build_caption_index: {name} must be >= 1, got {value}")
    if index_kind not in INDEX_KINDS:
        raise InputError(f"index_kind must be one of {INDEX_KINDS}, got {index_kind!r}")
    parse_memory(max_index_memory)
    if not 0.0 < recall_target <= 1.0:
        raise InputError(f"recall_target must lie in (0, 1], got {recall_target}")
    rank, world_size = rank_and_world(rank, world_size)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / "meta.json"
    encoders = {VLM_SPACE: vlm_encoder, TEXT_SPACE: text_encoder}
    meta = {
        "fingerprint": _fingerprint(captions),
        "num_captions": len(captions),
        "encoders": {space: encoder.name for space, encoder in encoders.items()},
        "batch_size": batch_size,
        "shard_rows": shard_rows,
    }
    settings = {"index_kind": index_kind, "max_index_memory": str(max_index_memory), "recall_target": recall_target}
    create_exclusively(directory / "captions.txt", lambda path: path.write_text("".join(c + "\n" for c in captions), encoding="utf-8"))
    create_exclusively(meta_path, lambda path: path.write_text(json.dumps(meta, indent=2)))
    existing = json.loads(meta_path.read_text())
    for key in meta:
        if existing.get(key) != meta[key]:
            raise ValueError(
                f"build_caption_index: {directory} holds an index built with another {key} "
                f"({existing.get(key)!r} vs {meta[key]!r}); use a new directory or delete it"
            )
    if existing.get("complete") and all(existing.get(key) == value for key, value in settings.items()):
        return CaptionIndex.load(directory)
    embed_shards(captions, directory, encoders, batch_size=batch_size, shard_rows=shard_rows, rank=rank, world_size=world_size)
    num_shards = len(shard_ranges(len(captions), shard_rows))
    wait_until(lambda: shards_done(directory, len(captions), shard_rows) == num_shards, "the other ranks' shards")
    if rank == 0:
        _index_spaces(directory, {**meta, **settings})
    wait_until(lambda: _is_complete(directory, settings), "rank 0's index")
    return CaptionIndex.load(directory)


def _is_complete(directory: Path, settings: dict) -> bool:
    meta = json.loads((directory / "meta.json").read_text())
    return bool(meta.get("complete")) and all(meta.get(key) == value for key, value in settings.items())


def _index_spaces(directory: Path, meta: dict) -> None:
    """Indexes the finished embeddings of both spaces, records what was chosen and measured, marks the build complete."""
    indices = {}
    for space in SPACES:
        vectors = np.load(directory / f"{space}.npy", mmap_mode="r")
        plan = plan_index(*vectors.shape, meta["index_kind"], meta["max_index_memory"])
        indices[space] = build_index(vectors, directory / f"{space}.faiss", plan, recall_target=meta["recall_target"], shard_rows=meta["shard_rows"])
    write_json(directory / "meta.json", {**meta, "indices": indices, "complete": True})


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

    def __init__(self, directory: Path, meta: dict, captions: Sequence[str], embeddings: dict, indices: dict, settings: dict) -> None:
        self.directory, self.meta, self.captions = directory, meta, captions
        self._embeddings, self._indices, self.settings = embeddings, indices, settings
        self._verified: set[str] = set()  # spaces whose recall was checked on real queries (`verify_search`)

    @classmethod
    def load(cls, directory: Path | str, *, nprobe: int | None = None, ef_search: int | None = None,
             rerank_factor: int | None = None) -> "CaptionIndex":
        """Opens an index searched with the settings tuned at build (raised by the first search if its queries
        need more, see `recall.verify_search`); `nprobe` (IVF), `ef_search` (HNSW) and `rerank_factor` (candidates
        re-ranked exactly per result) replace them as given, with a warning when below."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a caption index (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if not meta.get("complete"):
            raise RuntimeError(f"the caption index in {directory} is unfinished; run build_caption_index again to resume it")
        captions = CaptionLines(directory / "captions.txt")
        embeddings = {space: np.load(directory / f"{space}.npy", mmap_mode="r") for space in SPACES}
        indices, settings = {}, {}
        overrides = {"nprobe": nprobe, "ef_search": ef_search, "rerank_factor": rerank_factor}
        for space in SPACES:
            built = meta["indices"][space]
            tuned = {name: built[name] for name in overrides}
            chosen = {name: tuned[name] if value is None or tuned[name] is None else value for name, value in overrides.items()}
            lowered = [f"{name} {chosen[name]} < {tuned[name]}" for name in overrides if tuned[name] is not None and chosen[name] < tuned[name]]
            if lowered:
                warnings.warn(
                    f"the '{space}' index of {directory} was tuned to 10-recall@10 {built['recall_at_10']:.3f} "
                    f"(target {built['recall_target']}); searching with {', '.join(lowered)} gives less", stacklevel=2,
                )
            indices[space] = read_index(directory / f"{space}.faiss")
            settings[space] = SearchSettings(**chosen)
            settings[space].apply(indices[space])
        loaded = cls(directory, meta, captions, embeddings, indices, settings)
        if any(value is not None for value in overrides.values()):
            loaded._verified.update(SPACES)  # settings the caller chose (and was warned about) are kept as given
        return loaded

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
        built = self.meta["indices"][space]
        if built["kind"] == "flat":
            return self._indices[space].search(queries, min(k, len(self)))
        if space not in self._verified:
            where = f"the '{space}' index of {self.directory}"
            self.settings[space] = verify_search(self._indices[space], self.embeddings(space), queries, built, self.settings[space], where=where)
            self._verified.add(space)
        return search_reranked(self._indices[space], self.embeddings(space), queries, min(k, len(self)), self.settings[space])

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
