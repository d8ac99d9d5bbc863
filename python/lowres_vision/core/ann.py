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
per re-rank factor (1 to 64, shallow to deep) that reaches the recall target on held-out corpus rows
(rows outside the training sample, each query's own row excluded) is found, and the cheapest of
those settings in bytes read per query is kept (codes scanned, and a page or two of the vectors'
file per candidate re-ranked); deeper factors, and larger `nprobe`, are not measured once they cost
more than a setting found. The first search of an index then checks the recall of the queries
really asked, raising `nprobe` or the re-rank depth (`recall.verify_search`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..atomic_files import write_atomic
from ..errors import InputError
from .recall import DEFAULT_RECALL_TARGET, HNSW_NEIGHBOURS, ID_BYTES, tune_search

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
# Below this many vectors an exact scan is fast enough (100k x 1152 float32 is ~0.5 GB).
EXACT_MAX_VECTORS = 100_000
DEFAULT_MAX_INDEX_MEMORY = "4GB"
TUNING_QUERIES = 1000
HNSW_QUANTIZER_MIN_LISTS = 1 << 14
# k-means wants at least 39 training points per centroid (faiss warns below).
TRAIN_POINTS_PER_LIST = 40
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

    write_atomic(path, lambda temporary: faiss.write_index(index, str(temporary)))


def _rows(vectors: np.ndarray, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """vectors[rows] for sorted rows, read chunk by chunk from a memory-mapped array."""
    return np.concatenate([np.asarray(vectors[rows[i : i + chunk_rows]], dtype=np.float32) for i in range(0, len(rows), chunk_rows)])


def build_index(vectors: np.ndarray, path: Path, plan: IndexPlan, *, recall_target: float = DEFAULT_RECALL_TARGET,
                shard_rows: int = 1_000_000, chunk_rows: int = 65536, seed: int = 0) -> dict:
    """Builds `plan`'s index over `vectors` into `path` (+ `path`.ivfdata for IVF kinds), resuming finished shards,
    tunes its search and returns what was chosen and measured (recorded in the caption index's metadata)."""
    import faiss

    seconds = {"train": time.perf_counter()}
    num_rows, dim = vectors.shape
    sample = np.random.default_rng(seed).choice(num_rows, size=min(num_rows, plan.train_rows + TUNING_QUERIES), replace=False)
    query_rows = np.sort(sample[: min(TUNING_QUERIES, num_rows)])
    distortion = None
    if plan.nlist:
        train_rows = np.sort(sample[len(query_rows) :])
        plan, distortion = _train(vectors, train_rows if len(train_rows) else query_rows, path.with_name(path.name + ".trained"), plan, chunk_rows)
        seconds["add"] = time.perf_counter()
        index = _add_shards_and_merge(vectors, path, shard_rows, chunk_rows)
    else:
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        seconds["add"] = time.perf_counter()
        for start in tqdm(range(0, num_rows, chunk_rows), desc=f"indexing {path.stem}", unit="chunk", disable=num_rows <= chunk_rows):
            index.add(np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32))
        _write_index(index, path)
    seconds["tune"] = time.perf_counter()
    np.save(tuning_rows_path(path), query_rows)
    tuning = tune_search(index, vectors, plan, query_rows, recall_target)
    seconds["end"] = time.perf_counter()
    steps = list(seconds)
    return {
        **{key: value for key, value in asdict(plan).items() if key not in ("num_vectors", "dim")},
        **asdict(tuning.settings),
        "recall_at_10": tuning.recall, "recall_target": tuning.target, "tuning_queries": tuning.queries,
        "tuning": [list(entry) for entry in tuning.tried],
        "seconds": {step: round(seconds[following] - seconds[step], 2) for step, following in zip(steps, steps[1:])},
        "pq_distortion": distortion,  # {"plain", "opq"}: mean squared error of the codes on held-out sample rows
    }


def _train(vectors: np.ndarray, rows: np.ndarray, trained_path: Path, plan: IndexPlan, chunk_rows: int):
    """Trains the plan's IVF index on `rows` into `trained_path` (or reads it back) -> (plan, OPQ distortions or None)."""
    import faiss

    if trained_path.is_file():
        if plan.opq and not isinstance(faiss.read_index(str(trained_path)), faiss.IndexPreTransform):
            plan = _without_opq(plan)  # the interrupted build measured that OPQ did not help
        return plan, None
    sample = _rows(vectors, rows, chunk_rows)
    rotation, distortion = _rotation_if_it_helps(sample, plan.code_bytes) if plan.opq else (None, None)
    if plan.opq and rotation is None:
        plan = _without_opq(plan)
    if rotation is None:
        index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    else:  # the rotation trained for the check is the index's
        index = faiss.IndexPreTransform(rotation, faiss.index_factory(plan.dim, plan.factory.split(",", 1)[1], faiss.METRIC_INNER_PRODUCT))
    index.train(sample)
    _write_index(index, trained_path)
    return plan, distortion


def _add_shards_and_merge(vectors: np.ndarray, path: Path, shard_rows: int, chunk_rows: int):
    """Adds each shard of rows to a copy of the trained index, written to its own file (kept across a kill),
    then merges the shards' inverted lists on disk into `path`.ivfdata; returns the merged index, memory-mapped."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    trained_path = path.with_name(path.name + ".trained")
    num_rows = len(vectors)
    shard_paths = []
    for shard, start in enumerate(tqdm(range(0, num_rows, shard_rows), desc=f"indexing {path.stem} shards", unit="shard")):
        shard_paths.append(path.with_name(f"{path.name}.shard{shard:05d}"))
        if shard_paths[-1].is_file():
            continue  # finished before an interruption
        part = faiss.read_index(str(trained_path))
        for chunk in range(start, min(start + shard_rows, num_rows), chunk_rows):
            stop = min(chunk + chunk_rows, start + shard_rows, num_rows)
            part.add_with_ids(np.ascontiguousarray(vectors[chunk:stop], dtype=np.float32), np.arange(chunk, stop, dtype=np.int64))
        _write_index(part, shard_paths[-1])
    ivfdata = path.with_name(path.name + ".ivfdata")
    ivfdata.unlink(missing_ok=True)
    index = faiss.read_index(str(trained_path))
    merge_ondisk(index, [str(p) for p in shard_paths], str(ivfdata))
    _write_index(index, path)
    for temporary in (*shard_paths, trained_path):
        temporary.unlink()
    return read_index(path)


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
