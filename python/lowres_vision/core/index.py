"""An on-disk caption index: captions embedded in two spaces and searched with faiss.

Layout of an index directory:

    captions.txt          one caption per line: the corpus, streamed in once by the first rank (`corpus`) under
                          .captions.lock; its SHA-256 is the fingerprint in meta.json
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

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic_files import temporary_path, write_json
from ..errors import InputError
from .ann import DEFAULT_MAX_INDEX_MEMORY, INDEX_KINDS, build_index, parse_memory, plan_index, read_index
from .corpus import CaptionFiles, CaptionLines, stream_corpus
from .encoders import TextEncoder
from .recall import DEFAULT_RECALL_TARGET, SearchSettings, search_reranked, verify_search
from .shards import (
    DEFAULT_SHARD_ROWS, create_exclusively, embed_shards, holding_lock, rank_and_world, shard_ranges, shards_done, wait_until,
)

VLM_SPACE = "vlm"
TEXT_SPACE = "text"
SPACES = (VLM_SPACE, TEXT_SPACE)
# Release: near-duplicate captions among the k retrieved ones are dropped above this cosine.
DUPLICATE_COSINE = 0.94
# What a finished index must share with a build asked of it to be reused; batch and shard sizes no longer matter.
FINISHED_INDEX_KEYS = ("fingerprint", "num_captions", "encoders")


def build_caption_index(
    corpus: Sequence[str] | CaptionFiles,
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
    """Embeds the captions of `corpus` with both encoders into `directory` and builds the faiss indices.

    `corpus` is a list of captions (kept as given) or `CaptionFiles`, streamed from disk (normalised as
    `read_captions` does). Either is written once into `directory`/captions.txt and embedded from there,
    memory-mapped, so a corpus of any size is never held as Python strings.
    `index_kind="auto"` searches exactly up to 100k captions and with a product-quantised IVF index
    sized to `max_index_memory` above; its search is tuned to 10-recall@10 >= `recall_target` (see
    `ann`). Re-running on a directory that holds an unfinished build of the same corpus and encoders
    continues after the last completed batch of each shard; a finished one is loaded (and re-indexed
    from its stored embeddings when other index settings are asked for). With several ranks the first
    writes captions.txt while the others wait for it, then fingerprint their corpus; each embeds its
    shards, rank 0 waits for all of them and builds the index, and every rank returns it.
    """
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
    encoders = {VLM_SPACE: vlm_encoder, TEXT_SPACE: text_encoder}
    build = {"encoders": {space: encoder.name for space, encoder in encoders.items()}, "batch_size": batch_size, "shard_rows": shard_rows}
    existing = _settle_corpus(corpus, directory, build)
    # A finished index re-indexed under other settings keeps the shards it was embedded in.
    num_captions, batch_size, shard_rows = existing["num_captions"], existing["batch_size"], existing["shard_rows"]
    settings = {"index_kind": index_kind, "max_index_memory": str(max_index_memory), "recall_target": recall_target}
    if existing.get("complete") and all(existing.get(key) == value for key, value in settings.items()):
        return CaptionIndex.load(directory)
    captions = CaptionLines(directory / "captions.txt")
    embed_shards(captions, directory, encoders, batch_size=batch_size, shard_rows=shard_rows, rank=rank, world_size=world_size)
    num_shards = len(shard_ranges(num_captions, shard_rows))
    wait_until(lambda: shards_done(directory, num_captions, shard_rows) == num_shards, "the other ranks' shards")
    if rank == 0:
        _index_spaces(directory, {**existing, **settings})
    wait_until(lambda: _is_complete(directory, settings), "rank 0's index")
    return CaptionIndex.load(directory)


def _settle_corpus(corpus: Sequence[str] | CaptionFiles, directory: Path, build: dict) -> dict:
    """Writes the corpus into captions.txt unless it is there and checks that the directory holds this corpus and
    these build settings -> the directory's metadata.

    One process writes captions.txt, holding a lock the others wait on. It streams the corpus into a temporary file
    and links it into place only after meta.json (fingerprint and size) exists: a captions.txt is never seen without
    the metadata describing it. A killed writer leaves only its temporary file (and the lock, which the system
    releases): the next process to take the lock deletes it and writes captions.txt again.
    """
    captions_path, meta_path = directory / "captions.txt", directory / "meta.json"
    if not captions_path.exists():
        with holding_lock(directory / ".captions.lock", "another rank writing captions.txt"):
            if not captions_path.exists():
                for stale in directory.glob(f".{captions_path.name}.*.tmp"):
                    stale.unlink()
                temporary = temporary_path(captions_path)
                try:
                    meta = _corpus_meta(*stream_corpus(corpus, temporary), build)
                    create_exclusively(meta_path, lambda path: path.write_text(json.dumps(meta, indent=2)))
                    existing = _same_meta(directory, meta)
                    os.link(temporary, captions_path)
                finally:
                    temporary.unlink(missing_ok=True)
                return existing
    return _same_meta(directory, _corpus_meta(*stream_corpus(corpus), build))


def _corpus_meta(fingerprint: str, num_captions: int, build: dict) -> dict:
    if not num_captions:
        raise InputError("build_caption_index: the caption corpus is empty")
    return {"fingerprint": fingerprint, "num_captions": num_captions, **build}


def _same_meta(directory: Path, meta: dict) -> dict:
    """The directory's metadata, if it was made for `meta`'s corpus and encoders (and, while unfinished, its batch
    and shard sizes, which resuming depends on); else one clear error."""
    existing = json.loads((directory / "meta.json").read_text())
    for key in FINISHED_INDEX_KEYS if existing.get("complete") else meta:
        if existing.get(key) != meta[key]:
            raise InputError(
                f"build_caption_index: {directory} holds an index built with another {key} "
                f"({existing.get(key)!r} vs {meta[key]!r}); use a new directory or delete it"
            )
    return existing


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
