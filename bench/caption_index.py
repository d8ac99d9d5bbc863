"""Caption index at scale: build time, bytes per vector, 10-recall@10 and queries/s of the index
`lowres_vision.core.build_caption_index` builds, on synthetic clustered embeddings.

    OMP_NUM_THREADS=2 python -m bench.caption_index --rows 1000000 --dim 384 --max-index-memory 64MB \\
        --work /tmp/caption-index --out bench/results/caption-index-1m-384d.json
    OMP_NUM_THREADS=2 python -m bench.caption_index --rows 10000000 --dim 384 --max-index-memory 640MB \\
        --shard-rows 1000000 --recall-queries 300 --work /tmp/caption-index-10m --delete-work \\
        --out bench/results/caption-index-10m-384d.json
    python -m bench.caption_index --plot bench/results/caption-index-*.json --png bench/results/caption-index.png

The embeddings stand in for encoded captions (no text encoder runs): 1024 clusters, each point its
cluster's centre plus an offset along 32 directions of its own and a little isotropic noise, unit
norm — many topics, far fewer directions of variation than dimensions, as sentence embeddings have.
Queries are fresh points of the same clusters. The vectors are written to disk in chunks and the
index is built from the memory-mapped file, as a caption index is: trained on a sample, added shard
by shard and merged on disk; the exact neighbours recall is measured against are found by scanning
the file chunk by chunk. No step holds all vectors in memory (10M x 384-d is 15 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

CLUSTERS = 1024
SPREAD = 32
CHUNK_ROWS = 100_000


def generate(path: Path, rows: int, dim: int, *, seed: int) -> np.ndarray:
    """[rows, dim] clustered unit vectors written chunk by chunk to `path` (an .npy), memory-mapped."""
    model = np.random.default_rng(0)  # the clusters are shared by corpus and queries
    centres = model.standard_normal((CLUSTERS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    directions = model.standard_normal((CLUSTERS, SPREAD, dim), dtype=np.float32) / math.sqrt(dim)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in tqdm(range(0, rows, CHUNK_ROWS), desc=f"generating {path.name}", unit="chunk", disable=rows <= CHUNK_ROWS):
        rng = np.random.default_rng([seed, start])
        size = min(CHUNK_ROWS, rows - start)
        cluster = rng.integers(0, CLUSTERS, size)
        offsets = 0.6 * rng.standard_normal((size, SPREAD), dtype=np.float32) / math.sqrt(SPREAD)
        chunk = centres[cluster] + 0.15 * rng.standard_normal((size, dim), dtype=np.float32) / math.sqrt(dim)
        order = np.argsort(cluster, kind="stable")
        bounds = np.searchsorted(cluster[order], np.arange(CLUSTERS + 1))
        for k in range(CLUSTERS):
            rows_k = order[bounds[k] : bounds[k + 1]]
            chunk[rows_k] += offsets[rows_k] @ directions[k]
        out[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r")


def _rss_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "RssAnon", "RssFile")):
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
    return fields


class PeakAnonymousMemory:
    """The largest RssAnon (heap, not the page cache of memory-mapped files) seen while running, polled twice a second:
    the memory a build really holds, which VmHWM overstates by every mapped page of the vectors it read."""

    def __enter__(self):
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, _rss_kb()["RssAnon"])
            if self._stop.wait(0.5):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _timed_search(index, vectors, queries, k, settings, batch=1000):
    from lowres_vision.core.recall import search_reranked

    started = time.perf_counter()
    ids = np.concatenate([search_reranked(index, vectors, queries[i : i + batch], k, settings)[1] for i in range(0, len(queries), batch)])
    return ids, len(queries) / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    import faiss

    from lowres_vision.core import ann, recall

    args.work.mkdir(parents=True, exist_ok=True)
    vectors_path = args.work / f"vectors-{args.rows}x{args.dim}.npy"
    started = time.perf_counter()
    with PeakAnonymousMemory() as generate_peak:
        vectors = np.load(vectors_path, mmap_mode="r") if vectors_path.is_file() and not args.regenerate else generate(vectors_path, args.rows, args.dim, seed=1)
    generate_seconds = time.perf_counter() - started
    queries = np.asarray(generate(args.work / "queries.npy", args.queries, args.dim, seed=2))

    plan = ann.plan_index(args.rows, args.dim, "auto", args.max_index_memory)
    index_path = args.work / "index.faiss"
    started = time.perf_counter()
    with PeakAnonymousMemory() as build_peak:
        built = ann.build_index(vectors, index_path, plan, recall_target=args.recall_target, shard_rows=args.shard_rows)
    build_seconds = time.perf_counter() - started

    before = _rss_kb()
    index = ann.read_index(index_path)
    settings = recall.SearchSettings(nprobe=built["nprobe"], ef_search=built["ef_search"], rerank_factor=built["rerank_factor"])
    settings.apply(index)
    loaded = _rss_kb()
    k = recall.RECALL_K
    recall_queries = queries[: args.recall_queries]
    exact = recall.exact_neighbours(vectors, recall_queries, k)
    verified = recall.verify_search(index, vectors, queries, built, settings, where="bench")
    ids, qps = _timed_search(index, vectors, queries, k, verified)
    after = _rss_kb()
    index_bytes = index_path.stat().st_size + sum(p.stat().st_size for p in args.work.glob("index.faiss.ivfdata"))

    curve = []
    for factor in recall.RERANK_FACTORS if plan.kind != "flat" else ():  # an exact index has no knob to sweep
        for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
            if plan.nlist and nprobe > plan.nlist:
                break
            point = recall.SearchSettings(nprobe=nprobe if plan.nlist else None, ef_search=None if plan.nlist else 16 * nprobe, rerank_factor=factor)
            point.apply(index)
            found, point_qps = _timed_search(index, vectors, recall_queries, k, point)
            curve.append({"nprobe": nprobe, "rerank_factor": factor, "recall_at_10": recall.recall_at_k(found, exact), "queries_per_s": point_qps})
    return {
        "rows": args.rows, "dim": args.dim, "max_index_memory": args.max_index_memory, "threads": faiss.omp_get_max_threads(),
        "machine": platform.processor() or platform.machine(),
        "plan": {key: built[key] for key in ("factory", "nlist", "code_bytes", "opq", "memory_bytes")},  # as built (OPQ measured)
        "generate_seconds": round(generate_seconds, 1), "build_seconds": round(build_seconds, 1), "build_steps_seconds": built["seconds"],
        "tuned": {key: built[key] for key in ("nprobe", "ef_search", "rerank_factor", "recall_at_10", "tuning_queries")},
        "searched_with": {"nprobe": verified.nprobe, "ef_search": verified.ef_search, "rerank_factor": verified.rerank_factor},
        "recall_at_10_fresh_queries": recall.recall_at_k(ids[: len(exact)], exact), "queries_per_s": round(qps, 1), "timed_queries": len(queries),
        "index_bytes_per_vector_on_disk": round(index_bytes / args.rows, 2), "pq_distortion": built["pq_distortion"],
        "full_vectors_bytes_per_vector_on_disk": round(vectors_path.stat().st_size / args.rows, 2),
        # Held in RAM at most: the .faiss file read into the heap (quantizer, rotation, codebooks, list
        # headers) and every page of the memory-mapped inverted lists; the full vectors stay on disk.
        "index_bytes_per_vector_in_ram": round(index_bytes / args.rows, 2),
        "rss_kb": {"before_load": before, "after_load": loaded, "after_search": after},
        # Heap at its largest (memory-mapped vectors excluded): what generating and building held at once.
        "peak_anonymous_kb": {"generate": generate_peak.peak_kb, "build": build_peak.peak_kb},
        "curve": curve,
    }


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, result in zip(axes[0], results):
        for factor in sorted({point["rerank_factor"] for point in result["curve"]}):
            points = [p for p in result["curve"] if p["rerank_factor"] == factor]
            axis.plot([p["queries_per_s"] for p in points], [p["recall_at_10"] for p in points], marker="o", label=f"re-rank {factor}·k")
            for p in points:
                axis.annotate(str(p["nprobe"]), (p["queries_per_s"], p["recall_at_10"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.plot([result["queries_per_s"]], [result["recall_at_10_fresh_queries"]], marker="*", markersize=14, color="black", linestyle="none", label="tuned")
        axis.axhline(0.9, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xscale("log")
        axis.set_xlabel(f"queries/s ({result['threads']} threads)")
        axis.set_ylabel("10-recall@10 vs exact search")
        axis.set_title(f"{result['rows']:,} x {result['dim']}-d, {result['plan']['factory']}\n(labels: nprobe)", fontsize=9)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--max-index-memory", default="64MB")
    parser.add_argument("--recall-target", type=float, default=0.9)
    parser.add_argument("--shard-rows", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=10_000, help="fresh queries timed at the tuned settings")
    parser.add_argument("--recall-queries", type=int, default=1000, help="of which this many are checked against exact search")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lowres-caption-index"), help="vectors and index (large)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--delete-work", action="store_true", help="delete --work (vectors and index) after measuring")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--plot", type=Path, nargs="+", default=None, help="results JSONs to draw instead of running")
    parser.add_argument("--png", type=Path, default=Path(__file__).resolve().parent / "results" / "caption-index.png")
    args = parser.parse_args(argv)
    if args.plot:
        plot([json.loads(path.read_text()) for path in args.plot], args.png)
        return
    try:
        result = run(args)
    finally:
        if args.delete_work:
            shutil.rmtree(args.work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(json.dumps({key: value for key, value in result.items() if key not in ("curve", "rss_kb")}, indent=2))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
