"""Caption search indices under a memory budget: chosen as faiss factory strings, built shard by
shard and merged on disk, with 10-recall@10 measured and the search settings tuned at build.

Which index (`plan_index`), following the faiss wiki's "Guidelines to choose an index":

    exact   "Flat" up to EXACT_MAX_VECTORS vectors, when they fit the budget: CoRE's small corpora
    ivfpq   "OPQ{m}_{d},IVF{nlist},PQ{m}x8np" above: ~4·√n lists (a power of two; an HNSW coarse
            quantizer from 2^14 lists), and the largest code of m bytes per vector (4 dimensions per
            byte at most) with which the index held in RAM — codes, 8-byte ids, centroids,
            rotation, codebooks — fits `max_index_memory`. Where a byte codes more than 4
            dimensions OPQ is tried, and kept if it lowers the codes' error by 10 % on held-out rows.
    flat, ivf (IVF-Flat), hnsw (HNSW32) on request.

autofaiss makes the same choice, but its release 2.18 pins numpy < 2 and fails with faiss 1.15's
OPQMatrix, so the rule above is written here, from the same guidelines.

An IVF index is trained on a sample, each shard of rows is added to a copy of the trained index
and written to its own file (a killed build keeps its finished shards), and faiss `merge_ondisk`
merges the shards' inverted lists into one `.ivfdata` file that search memory-maps: neither the
build nor the search holds all codes in memory.

Every search re-ranks `rerank_factor`·k candidates exactly from the memory-mapped full vectors, so
the scores returned are true cosines. At build, the smallest `nprobe` (IVF) or `efSearch` (HNSW)
per re-rank factor that reaches the recall target on held-out corpus rows (rows outside the training
sample, each query's own row excluded) is found, and the cheapest of those settings is kept. The
first search of an index then checks the recall of the queries really asked (`verify_search`).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
# Below this many vectors an exact scan is fast enough (100k x 1152 float32 is ~0.5 GB).
EXACT_MAX_VECTORS = 100_000
DEFAULT_MAX_INDEX_MEMORY = "4GB"
DEFAULT_RECALL_TARGET = 0.9
RECALL_K = 10
TUNING_QUERIES = 1000
# The first search of each space checks its recall on this many of its queries, by an exact scan of
# the corpus when that is at most this many floats (4 s or so on two cores).
VERIFY_QUERIES = 32
VERIFY_MAX_FLOATS = 2_000_000_000
RERANK_FACTORS = (1, 2, 4, 8)
HNSW_NEIGHBOURS = 32
HNSW_QUANTIZER_MIN_LISTS = 1 << 14
# k-means wants at least 39 training points per centroid (faiss warns below).
TRAIN_POINTS_PER_LIST = 40
ID_BYTES = 8
# OPQ is kept when it lowers the codes' squared error by this much on held-out rows; it is trained with
# fewer iterations and points than faiss's defaults (50, 65536), which take minutes on two cores.
OPQ_MIN_GAIN = 0.1
OPQ_ITERATIONS = 10
OPQ_SAMPLE = 16384
OPQ_HELD_OUT = 2048
_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_memory(value: str | int) -> int:
    """'4GB', '512MB', '64 KB' or a byte count -> bytes (binary units)."""
    if isinstance(value, int) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", str(value).upper())
    if match is None or float(match.group(1)) <= 0:
        raise InputError(f"max_index_memory must be a positive size like '4GB' or '512MB', got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class IndexPlan:
    """A faiss index chosen for `num_vectors` x `dim` vectors, and the RAM it will hold."""

    kind: str
    factory: str
    num_vectors: int
    dim: int
    nlist: int = 0  # IVF lists (0: not an IVF index)
    code_bytes: int = 0  # bytes per vector in the inverted lists or the flat storage
    opq: bool = False
    memory_bytes: int = 0

    @property
    def train_rows(self) -> int:
        return min(self.num_vectors, TRAIN_POINTS_PER_LIST * self.nlist) if self.nlist else 0


def _num_lists(num_vectors: int) -> int:
    lists = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(num_vectors))))
    return max(1, min(lists, num_vectors // TRAIN_POINTS_PER_LIST))


def _ivf_factory(nlist: int) -> str:
    return f"IVF{nlist}_HNSW{HNSW_NEIGHBOURS}" if nlist >= HNSW_QUANTIZER_MIN_LISTS else f"IVF{nlist}"


def _quantizer_bytes(nlist: int, dim: int) -> int:
    graph = nlist * HNSW_NEIGHBOURS * 2 * 4 if nlist >= HNSW_QUANTIZER_MIN_LISTS else 0
    return nlist * dim * 4 + graph


def plan_index(num_vectors: int, dim: int, kind: str = "auto", max_index_memory: str | int = DEFAULT_MAX_INDEX_MEMORY,
               *, opq: bool | None = None) -> IndexPlan:
    """The index for `kind` (see the module docstring). For "ivfpq", `opq=False` rules OPQ out and `opq=True`
    tries it at any code size; either way the build keeps it only where it measurably helps."""
    if kind not in INDEX_KINDS:
        raise InputError(f"index_kind must be one of {INDEX_KINDS}, got {kind!r}")
    budget = parse_memory(max_index_memory)
    flat_bytes = num_vectors * dim * 4
    if kind == "flat" or (kind == "auto" and num_vectors <= EXACT_MAX_VECTORS and flat_bytes <= budget):
        return IndexPlan("flat", "Flat", num_vectors, dim, code_bytes=4 * dim, memory_bytes=flat_bytes)
    if kind == "hnsw":
        per_vector = 4 * dim + HNSW_NEIGHBOURS * 2 * 4
        return IndexPlan("hnsw", f"HNSW{HNSW_NEIGHBOURS}", num_vectors, dim, code_bytes=4 * dim, memory_bytes=num_vectors * per_vector)
    nlist = _num_lists(num_vectors)
    if kind == "ivf":
        memory = num_vectors * (4 * dim + ID_BYTES) + _quantizer_bytes(nlist, dim)
        return IndexPlan("ivf", f"{_ivf_factory(nlist)},Flat", num_vectors, dim, nlist, 4 * dim, memory_bytes=memory)
    fixed = _quantizer_bytes(nlist, dim) + 256 * dim * 4  # centroids and PQ codebooks
    for m in sorted((m for m in range(1, dim // 4 + 1) if dim % m == 0), reverse=True):
        rotate = m < dim // 4 if opq is None else opq
        memory = num_vectors * (m + ID_BYTES) + fixed + (dim * dim * 4 if rotate else 0)
        if memory <= budget:
            prefix = f"OPQ{m}_{dim}," if rotate else ""
            # "np": no polysemous training (a code reordering for Hamming filtering we do not use, and slow).
            return IndexPlan("ivfpq", f"{prefix}{_ivf_factory(nlist)},PQ{m}x8np", num_vectors, dim, nlist, m, rotate, memory)
    smallest = num_vectors * (1 + ID_BYTES) + fixed
    raise InputError(
        f"max_index_memory {max_index_memory!r} cannot hold {num_vectors} vectors of {dim} dimensions: "
        f"the smallest product-quantised index needs {smallest / 2**20:.1f} MB"
    )


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
    tried, reached = [], []
    for factor in RERANK_FACTORS:
        value = start
        while True:
            settings = SearchSettings(**{knob: value}, rerank_factor=factor)
            settings.apply(index)
            found = _without_self(search_reranked(index, vectors, queries, RECALL_K + 1, settings)[1], query_rows, RECALL_K)
            recall = recall_at_k(found, exact)
            tried.append((value, factor, recall))
            if recall >= target:
                reached.append((settings, recall))
                break
            if value >= limit:
                break
            value = min(2 * value, limit)
    if reached:
        settings, recall = min(reached, key=lambda pair: _search_cost(plan, pair[0]))
    else:
        value, factor, recall = max(tried, key=lambda entry: entry[2])
        settings = SearchSettings(**{knob: value}, rerank_factor=factor)
        warnings.warn(f"the {plan.factory} index reaches 10-recall@10 {recall:.3f} at best, below the target {target}", stacklevel=2)
    settings.apply(index)
    return Tuning(settings, recall, target, len(query_rows), tried)


def verify_search(index, vectors: np.ndarray, queries: np.ndarray, built: dict, settings: SearchSettings, *, where: str) -> SearchSettings:
    """Checks 10-recall@10 of (up to VERIFY_QUERIES of) the queries actually searched, and raises `nprobe` /
    `efSearch` until they reach the build's target: queries unlike the corpus (images across the modality
    gap) can need more than the held-out rows did. Says so whenever it changes or cannot check anything."""
    target = built["recall_target"]
    if vectors.size > VERIFY_MAX_FLOATS:
        warnings.warn(f"{where}: recall not verified on these queries (an exact scan of {len(vectors)} vectors is too long)", stacklevel=3)
        return settings
    sample = np.ascontiguousarray(queries[:VERIFY_QUERIES], dtype=np.float32)
    k = min(RECALL_K, len(vectors))
    exact = exact_neighbours(vectors, sample, k)
    knob, limit = ("nprobe", built["nlist"]) if built["nlist"] else ("ef_search", 4096)
    first = recall = recall_at_k(search_reranked(index, vectors, sample, k, settings)[1], exact)
    while recall < target and getattr(settings, knob) < limit:
        settings = SearchSettings(**{**asdict(settings), knob: min(2 * getattr(settings, knob), limit)})
        settings.apply(index)
        recall = recall_at_k(search_reranked(index, vectors, sample, k, settings)[1], exact)
    if recall != first:
        warnings.warn(
            f"{where}: these queries reach 10-recall@10 {first:.3f} at the {knob} tuned on the corpus; "
            f"searching with {knob} {getattr(settings, knob)} instead ({recall:.3f}, target {target})", stacklevel=3,
        )
    if recall < target:
        warnings.warn(f"{where}: these queries reach 10-recall@10 {recall:.3f} at best, below the target {target}", stacklevel=3)
    return settings


def _search_cost(plan: IndexPlan, settings: SearchSettings) -> float:
    """Bytes touched per query: codes scanned in the probed lists (or the HNSW beam) plus rows re-ranked."""
    if plan.nlist:
        scanned = settings.nprobe * plan.num_vectors / plan.nlist * (plan.code_bytes + ID_BYTES)
    else:
        scanned = settings.ef_search * HNSW_NEIGHBOURS * plan.code_bytes
    return scanned + settings.rerank_factor * RECALL_K * plan.dim * 4


def _without_opq(plan: IndexPlan) -> IndexPlan:
    return replace(plan, factory=plan.factory.split(",", 1)[1], opq=False, memory_bytes=plan.memory_bytes - plan.dim * plan.dim * 4)


def _rotation_if_it_helps(sample: np.ndarray, code_bytes: int):
    """A trained OPQ rotation if it lowers the product quantiser's error by OPQ_MIN_GAIN on held-out sample rows,
    else None; and both errors."""
    import faiss

    held = min(OPQ_HELD_OUT, len(sample) // 4)
    held_out, train = sample[:held], sample[held:][:OPQ_SAMPLE]
    dim = sample.shape[1]
    rotation = faiss.OPQMatrix(dim, code_bytes)
    rotation.niter, rotation.max_train_points, rotation.verbose = OPQ_ITERATIONS, OPQ_SAMPLE, False
    rotation.train(train)
    errors = {}
    for name, transform in (("plain", lambda x: x), ("opq", rotation.apply)):
        quantizer = faiss.ProductQuantizer(dim, code_bytes, 8)
        quantizer.train(np.ascontiguousarray(transform(train)))
        codes_of = np.ascontiguousarray(transform(held_out))
        errors[name] = float(np.mean(np.sum((quantizer.decode(quantizer.compute_codes(codes_of)) - codes_of) ** 2, axis=1)))
    return (rotation if errors["opq"] <= (1 - OPQ_MIN_GAIN) * errors["plain"] else None), errors


def _write_index(index, path: Path) -> None:
    import faiss

    temporary = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)


def _rows(vectors: np.ndarray, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """vectors[rows] for sorted rows, read chunk by chunk from a memory-mapped array."""
    return np.concatenate([np.asarray(vectors[rows[i : i + chunk_rows]], dtype=np.float32) for i in range(0, len(rows), chunk_rows)])


def build_index(vectors: np.ndarray, path: Path, plan: IndexPlan, *, recall_target: float = DEFAULT_RECALL_TARGET,
                shard_rows: int = 1_000_000, chunk_rows: int = 65536, seed: int = 0) -> dict:
    """Builds `plan`'s index over `vectors` into `path` (+ `path`.ivfdata for IVF kinds), resuming finished shards,
    tunes its search and returns what was chosen and measured (recorded in the caption index's metadata)."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    started = time.perf_counter()
    num_rows, dim = vectors.shape
    rng = np.random.default_rng(seed)
    sample = rng.choice(num_rows, size=min(num_rows, plan.train_rows + TUNING_QUERIES), replace=False)
    query_rows = np.sort(sample[: min(TUNING_QUERIES, num_rows)])
    train_rows = np.sort(sample[len(query_rows) :]) if plan.nlist else np.empty(0, dtype=np.int64)
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    distortion = None
    if plan.nlist:
        trained_path = path.with_name(path.name + ".trained")
        if trained_path.is_file():
            index = faiss.read_index(str(trained_path))
            if plan.opq and not isinstance(index, faiss.IndexPreTransform):
                plan = _without_opq(plan)  # the interrupted build measured that OPQ did not help
        else:
            sample = _rows(vectors, train_rows if len(train_rows) else query_rows, chunk_rows)
            if plan.opq:
                rotation, distortion = _rotation_if_it_helps(sample, plan.code_bytes)
                if rotation is None:
                    plan = _without_opq(plan)
                    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
                else:  # the rotation trained for the check is the index's
                    index = faiss.IndexPreTransform(rotation, faiss.index_factory(dim, plan.factory.split(",", 1)[1], faiss.METRIC_INNER_PRODUCT))
            index.train(sample)
            _write_index(index, trained_path)
        shard_paths = []
        for shard, start in enumerate(tqdm(range(0, num_rows, shard_rows), desc=f"indexing {path.stem} shards", unit="shard")):
            shard_path = path.with_name(f"{path.name}.shard{shard:05d}")
            shard_paths.append(shard_path)
            if shard_path.is_file():
                continue  # finished before an interruption
            part = faiss.read_index(str(trained_path))
            for chunk in range(start, min(start + shard_rows, num_rows), chunk_rows):
                stop = min(chunk + chunk_rows, start + shard_rows, num_rows)
                part.add_with_ids(np.ascontiguousarray(vectors[chunk:stop], dtype=np.float32), np.arange(chunk, stop, dtype=np.int64))
            _write_index(part, shard_path)
        ivfdata = path.with_name(path.name + ".ivfdata")
        ivfdata.unlink(missing_ok=True)
        index = faiss.read_index(str(trained_path))
        merge_ondisk(index, [str(p) for p in shard_paths], str(ivfdata))
        _write_index(index, path)
        for temporary in (*shard_paths, trained_path):
            temporary.unlink()
        index = read_index(path)
    else:
        for start in tqdm(range(0, num_rows, chunk_rows), desc=f"indexing {path.stem}", unit="chunk", disable=num_rows <= chunk_rows):
            index.add(np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32))
        _write_index(index, path)
    built = time.perf_counter() - started
    np.save(tuning_rows_path(path), query_rows)
    tuning = tune_search(index, vectors, plan, query_rows, recall_target)
    return {
        **{key: value for key, value in asdict(plan).items() if key not in ("num_vectors", "dim")},
        **asdict(tuning.settings),
        "recall_at_10": tuning.recall, "recall_target": tuning.target, "tuning_queries": tuning.queries,
        "tuning": [list(entry) for entry in tuning.tried], "build_seconds": round(built, 2),
        "pq_distortion": distortion,  # {"plain", "opq"}: mean squared error of the codes on held-out sample rows
    }


def tuning_rows_path(path: Path) -> Path:
    """Where the corpus rows the recall was measured on are kept, beside the index file."""
    return path.with_name(path.name + ".tuning_rows.npy")


def read_index(path: Path):
    """Opens an index file memory-mapped: an IVF index's inverted lists from the .ivfdata beside it, others whole."""
    import faiss

    if path.with_name(path.name + ".ivfdata").is_file():
        # The on-disk inverted lists map themselves; mapping the index file too crashes faiss 1.15.
        return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR)
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        # Index types without memory-mapping support in this faiss build are read into memory.
        return faiss.read_index(str(path))
