"""Searching a caption index: exact re-ranking of its candidates, recall against exact search, and the
search settings tuned at build (`tune_search`) and checked on the first real queries (`verify_search`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .ann import IndexPlan

DEFAULT_RECALL_TARGET = 0.9
RECALL_K = 10
# Candidates re-ranked per result, tried from shallow to deep, up to a few hundred for k = 10: coarse codes
# (48 bytes for 384-d, 10M vectors in bench/caption_index.py) rank the true neighbours too low for 8·k.
RERANK_FACTORS = (1, 2, 4, 8, 16, 32, 64)
# Doubling nprobe / efSearch stops once recall gains less than this: the re-rank depth is the limit then.
RECALL_PLATEAU = 0.002
# The first search of each space checks its recall on this many of its queries, by an exact scan of
# the corpus when that is at most this many floats (4 s or so on two cores).
VERIFY_QUERIES = 32
VERIFY_MAX_FLOATS = 2_000_000_000
HNSW_NEIGHBOURS = 32
ID_BYTES = 8  # an IVF list stores each vector's id beside its code
PAGE_BYTES = 4096  # what reading a row of the memory-mapped vectors reads at least


@dataclass
class SearchSettings:
    """How an index is searched: the IVF lists probed, the HNSW beam, and the candidates re-ranked per result."""

    nprobe: int | None = None
    ef_search: int | None = None
    rerank_factor: int = 1

    def apply(self, index) -> None:
        import faiss

        space = faiss.ParameterSpace()
        if self.nprobe is not None:
            space.set_index_parameter(index, "nprobe", self.nprobe)
            if "HNSW" in _quantizer_name(index):
                space.set_index_parameter(index, "quantizer_efSearch", max(64, 2 * self.nprobe))
        if self.ef_search is not None:
            space.set_index_parameter(index, "efSearch", self.ef_search)


def _quantizer_name(index) -> str:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return type(faiss.downcast_index(ivf.quantizer)).__name__ if ivf is not None else ""


def search_reranked(index, vectors: np.ndarray, queries: np.ndarray, k: int, settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by exact inner product among the index's `rerank_factor`·k candidates -> (scores, ids; -1 where none)."""
    candidates = min(len(vectors), k * settings.rerank_factor)
    _, ids = index.search(queries, candidates)
    valid = ids >= 0
    # Sorted unique rows: the memory-mapped vectors are read in file order, each once.
    rows, inverse = np.unique(np.where(valid, ids, 0), return_inverse=True)
    gathered = np.asarray(vectors[rows], dtype=np.float32)[inverse.reshape(ids.shape)]
    scores = np.einsum("qd,qcd->qc", queries, gathered)
    scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best_ids = np.take_along_axis(ids, order, axis=1)
    best = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    return best, np.where(best_ids >= 0, best_ids, -1)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk_rows: int = 65536) -> np.ndarray:
    """[q, k] ids of the exact top-k by inner product, scanning the (memory-mapped) vectors in chunks."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    chunks = (np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32) for start in range(0, len(vectors), chunk_rows))
    return knn_ground_truth(queries, chunks, k, metric_type=faiss.METRIC_INNER_PRODUCT)[1]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k (rows of `exact`) that `found` returns in its top-k."""
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(found, exact)]))


def _without_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row other than the query's own row."""
    kept = [row_ids[row_ids != row][:k] for row_ids, row in zip(ids, rows)]
    return np.stack([np.pad(row_ids, (0, k - len(row_ids)), constant_values=-1) for row_ids in kept])


@dataclass
class Tuning:
    settings: SearchSettings
    recall: float  # 10-recall@10 on the held-out rows at `settings`
    target: float
    queries: int
    tried: list = field(default_factory=list)  # (nprobe or efSearch, rerank_factor, recall) per setting measured


def tune_search(index, vectors: np.ndarray, plan: IndexPlan, query_rows: np.ndarray, target: float = DEFAULT_RECALL_TARGET) -> Tuning:
    """The cheapest settings reaching 10-recall@10 >= `target` on the sorted corpus rows `query_rows` (see the module docstring)."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"recall_target must lie in (0, 1], got {target}")
    queries = np.ascontiguousarray(vectors[query_rows], dtype=np.float32)
    if plan.kind == "flat":
        return Tuning(SearchSettings(), 1.0, target, len(query_rows))
    exact = _without_self(exact_neighbours(vectors, queries, RECALL_K + 1), query_rows, RECALL_K)
    knob, limit = ("nprobe", plan.nlist) if plan.nlist else ("ef_search", 4096)
    start = 1 if plan.nlist else 16
    tried, cheapest, cheapest_cost = [], None, math.inf
    for factor in RERANK_FACTORS:
        if _search_cost(plan, SearchSettings(**{knob: start}, rerank_factor=factor)) >= cheapest_cost:
            break  # re-ranking this deep (and deeper) costs more than the cheapest setting found, whatever the knob
        value, previous = start, -1.0
        while True:
            settings = SearchSettings(**{knob: value}, rerank_factor=factor)
            cost = _search_cost(plan, settings)
            if cost >= cheapest_cost:
                break  # probing more costs more than the cheapest setting found
            settings.apply(index)
            found = _without_self(search_reranked(index, vectors, queries, RECALL_K + 1, settings)[1], query_rows, RECALL_K)
            recall = recall_at_k(found, exact)
            tried.append((value, factor, recall))
            if recall >= target:
                cheapest, cheapest_cost = (settings, recall), cost
                break
            if value >= limit or recall - previous < RECALL_PLATEAU:
                break
            value, previous = min(2 * value, limit), recall
    if cheapest is not None:
        settings, recall = cheapest
    else:
        value, factor, recall = max(tried, key=lambda entry: entry[2])
        settings = SearchSettings(**{knob: value}, rerank_factor=factor)
        warnings.warn(f"the {plan.factory} index reaches 10-recall@10 {recall:.3f} at best, below the target {target}", stacklevel=2)
    settings.apply(index)
    return Tuning(settings, recall, target, len(query_rows), tried)


def verify_search(index, vectors: np.ndarray, queries: np.ndarray, built: dict, settings: SearchSettings, *, where: str) -> SearchSettings:
    """Checks 10-recall@10 of (up to VERIFY_QUERIES of) the queries actually searched and, until they reach the
    build's target, doubles `nprobe` / `efSearch` or the re-rank depth, whichever gains more recall per byte it
    adds to a search (`_search_cost`): queries unlike the corpus (images across the modality gap) can need more
    lists, or more candidates, than the held-out rows did. Says so whenever it changes or cannot check anything."""
    from .ann import IndexPlan

    target = built["recall_target"]
    if vectors.size > VERIFY_MAX_FLOATS:
        warnings.warn(f"{where}: recall not verified on these queries (an exact scan of {len(vectors)} vectors is too long)", stacklevel=3)
        return settings
    plan = IndexPlan(built["kind"], built["factory"], len(vectors), vectors.shape[1], built["nlist"], built["code_bytes"])
    sample = np.ascontiguousarray(queries[:VERIFY_QUERIES], dtype=np.float32)
    k = min(RECALL_K, len(vectors))
    exact = exact_neighbours(vectors, sample, k)
    knob, limit = ("nprobe", built["nlist"]) if built["nlist"] else ("ef_search", 4096)

    def measured(candidate: SearchSettings) -> float:
        candidate.apply(index)
        return recall_at_k(search_reranked(index, vectors, sample, k, candidate)[1], exact)

    tuned, first = settings, measured(settings)
    recall = first
    while recall < target:
        steps = []
        if getattr(settings, knob) < limit:
            steps.append(SearchSettings(**{**asdict(settings), knob: min(2 * getattr(settings, knob), limit)}))
        if settings.rerank_factor < RERANK_FACTORS[-1]:
            steps.append(SearchSettings(**{**asdict(settings), "rerank_factor": min(2 * settings.rerank_factor, RERANK_FACTORS[-1])}))
        gains = [(step, measured(step)) for step in steps]
        gains = [(step, gained) for step, gained in gains if gained - recall >= RECALL_PLATEAU]
        if not gains:
            break
        cost = _search_cost(plan, settings)
        settings, recall = max(gains, key=lambda pair: (pair[1] - recall) / (_search_cost(plan, pair[0]) - cost))
    settings.apply(index)  # the last step measured may not be the one taken
    if settings != tuned:
        warnings.warn(
            f"{where}: these queries reach 10-recall@10 {first:.3f} at the settings tuned on the corpus "
            f"({_described(tuned, knob)}); searching with {_described(settings, knob)} instead ({recall:.3f}, target {target})",
            stacklevel=3,
        )
    if recall < target:
        warnings.warn(f"{where}: these queries reach 10-recall@10 {recall:.3f} at best, below the target {target}", stacklevel=3)
    return settings


def _described(settings: SearchSettings, knob: str) -> str:
    return f"{knob} {getattr(settings, knob)}, rerank_factor {settings.rerank_factor}"


def _search_cost(plan: IndexPlan, settings: SearchSettings) -> float:
    """Bytes read per query: the codes scanned in the probed lists (or along the HNSW beam), and for each candidate
    re-ranked the pages its row of the memory-mapped vectors lies on (a row of b bytes at an arbitrary offset spans
    1 + (b - 1) / PAGE_BYTES pages on average): a row read at random costs its pages, not its bytes."""
    if plan.nlist:
        scanned = settings.nprobe * plan.num_vectors / plan.nlist * (plan.code_bytes + ID_BYTES)
    else:
        scanned = settings.ef_search * HNSW_NEIGHBOURS * plan.code_bytes
    return scanned + settings.rerank_factor * RECALL_K * (PAGE_BYTES + 4 * plan.dim - 1)
