"""CoRE caption indices at scale: the index chooser, recall measured at build, shard-by-shard indexing
merged on disk, and sharded embedding across ranks resumed after a kill."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_core import FailingEncoder, LookupEncoder, make_captions

from lowres_vision.core import TEXT_SPACE, VLM_SPACE, CaptionIndex, build_caption_index, parse_memory, plan_index
from lowres_vision.core import ann, recall, shards

pytestmark = pytest.mark.usefixtures("single_thread")


def clustered(rows, dim, *, seed, clusters=32, spread=4):
    """Unit vectors around `clusters` centres, varying within a cluster along `spread` directions (as embeddings
    of real text do: far fewer directions than dimensions)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    directions = torch.randn(spread, dim, generator=generator) / spread**0.5
    offsets = 0.5 * torch.randn(rows, spread, generator=generator) @ directions + 0.05 * torch.randn(rows, dim, generator=generator)
    return F.normalize(centres[torch.arange(rows) % clusters] + offsets, dim=-1)


def test_plan_index_exact_for_small_corpora_and_pq_within_the_budget():
    import faiss

    assert plan_index(50_000, 384).factory == "Flat"  # 77 MB fits the default 4GB: exact, CoRE as before
    # 1M x 384 in 64 MB: 4096 lists (4·√n), and the largest code that fits, 48 bytes + 8 for the id,
    # with OPQ since each byte codes 8 dimensions: (48 + 8)·1M + 4096·384·4 + 256·384·4 + 384²·4 bytes.
    plan = plan_index(1_000_000, 384, "auto", "64MB")
    assert plan.factory == "OPQ48_384,IVF4096,PQ48x8np"
    assert plan.memory_bytes == 56 * 1_000_000 + 4096 * 384 * 4 + 256 * 384 * 4 + 384 * 384 * 4 <= 64 * 2**20
    assert plan.train_rows == 40 * 4096
    # 12M x 1152 in 4 GB: 16384 lists behind an HNSW quantizer; 288 bytes (4 dimensions each): no OPQ.
    assert plan_index(12_000_000, 1152, "auto", "4GB").factory == "IVF16384_HNSW32,PQ288x8np"
    assert plan_index(1_000_000, 384, "ivfpq", "64MB", opq=False).factory == "IVF4096,PQ48x8np"
    assert plan_index(200_000, 64).factory.startswith("IVF") and plan_index(200_000, 64, "flat").factory == "Flat"
    for n, dim, memory in ((1_000_000, 384, "64MB"), (12_000_000, 1152, "4GB"), (50_000, 32, "1MB")):
        plan = plan_index(n, dim, "auto", memory)
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        assert faiss.extract_index_ivf(index).code_size == plan.code_bytes and plan.memory_bytes <= parse_memory(memory)
    with pytest.raises(ValueError, match=r"max_index_memory '8MB' cannot hold 1000000 vectors .* needs 15\.\d MB"):
        plan_index(1_000_000, 384, "auto", "8MB")
    with pytest.raises(ValueError, match="max_index_memory must be a positive size"):
        parse_memory("lots")
    with pytest.raises(ValueError, match="index_kind must be one of"):
        plan_index(10, 4, "lsh")
    assert parse_memory("1.5KB") == 1536 and parse_memory("4GB") == 4 * 2**30


def exact_without_self(corpus, rows, k=10):
    scores = corpus[rows] @ corpus.T
    scores[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_compressed_index_reports_the_recall_it_is_searched_at(tmp_path):
    captions = [f"c{i}" for i in range(3000)]
    vlm, text = LookupEncoder(captions[:1], 32, seed=0), LookupEncoder(captions[:1], 4, seed=1)
    vlm.rows, text.rows = dict(zip(captions, clustered(3000, 32, seed=3))), dict(zip(captions, clustered(3000, 4, seed=4)))
    # The 32-d space (384 KB as float32) does not fit 85 KB: 75 lists, 4-byte codes after OPQ.
    # The 4-d one (48 KB) does, and stays exact.
    index = build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text, batch_size=1000, max_index_memory="85KB")
    built = index.meta["indices"][VLM_SPACE]
    assert (built["kind"], built["factory"], built["recall_target"]) == ("ivfpq", "OPQ4_32,IVF75,PQ4x8np", 0.9)
    assert built["recall_at_10"] >= 0.9 and built["tuning_queries"] == 1000
    assert built["pq_distortion"]["opq"] <= 0.9 * built["pq_distortion"]["plain"]  # why OPQ was kept
    assert index.meta["indices"][TEXT_SPACE]["kind"] == "flat" and index.meta["indices"][TEXT_SPACE]["recall_at_10"] == 1.0

    # The reported recall is what search returns at the tuned settings on the held-out rows, own row excluded.
    rows = np.load(ann.tuning_rows_path(tmp_path / "index" / "vlm.faiss"))
    corpus = np.asarray(index.embeddings(VLM_SPACE))
    exact = exact_without_self(corpus, rows)

    def measured_recall(searched):
        ids = searched.search(VLM_SPACE, corpus[rows], k=11)[1]
        found = [row_ids[row_ids != row][:10] for row_ids, row in zip(ids, rows)]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    tuned = CaptionIndex.load(tmp_path / "index", nprobe=built["nprobe"], rerank_factor=built["rerank_factor"])
    assert measured_recall(tuned) == pytest.approx(built["recall_at_10"])
    # The search at the tuned nprobe is not the last one tried: one step less falls below the target.
    below = [r for nprobe, factor, r in built["tuning"] if factor == built["rerank_factor"] and nprobe < built["nprobe"]]
    assert below and max(below) < 0.9
    with pytest.warns(UserWarning, match=r"tuned to 10-recall@10 0\.9\d\d .*nprobe 1 < "):
        weaker = CaptionIndex.load(tmp_path / "index", nprobe=1)
    assert measured_recall(weaker) < built["recall_at_10"]
    # Scores are exact cosines even though the codes are 4 bytes: the candidates are re-ranked.
    scores, ids = index.search(VLM_SPACE, corpus[:5], k=3)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", corpus[:5], corpus[ids]), rtol=1e-5, atol=1e-6)


def test_opq_is_kept_only_where_it_lowers_the_code_error(tmp_path):
    # Variation along 4 directions of 32 is what OPQ's rotation balances across sub-vectors; isotropic
    # noise has nothing to balance.
    structured = clustered(3000, 32, seed=8).numpy()
    isotropic = F.normalize(torch.randn(3000, 32, generator=torch.Generator().manual_seed(9)), dim=-1).numpy()
    rotation, errors = ann._rotation_if_it_helps(structured, 4)
    assert rotation is not None and errors["opq"] <= 0.9 * errors["plain"]
    rotation, errors = ann._rotation_if_it_helps(isotropic, 4)
    assert rotation is None and errors["opq"] > 0.9 * errors["plain"]
    # A build that measures no gain drops OPQ from its factory string and builds the rest.
    np.save(tmp_path / "isotropic.npy", isotropic)
    plan = plan_index(3000, 32, "ivfpq", "1MB", opq=True)
    built = ann.build_index(np.load(tmp_path / "isotropic.npy", mmap_mode="r"), tmp_path / "isotropic.faiss", plan)
    assert plan.factory.startswith("OPQ8_32,") and (built["factory"], built["opq"]) == (plan.factory.split(",", 1)[1], False)
    assert built["memory_bytes"] == plan.memory_bytes - 32 * 32 * 4


def test_first_search_raises_nprobe_for_queries_unlike_the_corpus(tmp_path):
    # Queries far from every caption (as images are, across the modality gap) need more lists than the
    # held-out captions the build tuned on: the first search finds out and probes more.
    captions = make_captions(4000)
    table = clustered(4000, 32, seed=6)
    vlm, text = LookupEncoder(captions, 32, seed=0), LookupEncoder(captions, 4, seed=1)
    vlm.rows = dict(zip(captions, table))
    index = build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text, index_kind="ivf")
    tuned = index.settings[VLM_SPACE].nprobe
    queries = F.normalize(table[:32] + 0.4 * torch.randn(32, 32, generator=torch.Generator().manual_seed(7)), dim=-1).numpy()
    with pytest.warns(UserWarning, match=r"reach 10-recall@10 0\.\d+ at the settings tuned on the corpus \(nprobe \d+, rerank_factor 1\); "
                      r"searching with nprobe \d+, rerank_factor 1 instead"):
        _, ids = index.search(VLM_SPACE, queries, k=10)
    assert index.settings[VLM_SPACE].nprobe > tuned
    exact = np.argsort(-(queries @ table.numpy().T), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]) >= 0.9
    # Checked once per space: a second search keeps the settings and says nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.search(VLM_SPACE, queries[::-1].copy(), k=10)


def test_ivf_shards_resume_after_a_kill_and_merge_on_disk(tmp_path, monkeypatch):
    import faiss

    vectors = clustered(6000, 16, seed=5).numpy()
    np.save(tmp_path / "vectors.npy", vectors)
    memmapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    plan = plan_index(6000, 16, "ivfpq", "100KB")  # IVF150,PQ4x8np
    reference = ann.build_index(memmapped, tmp_path / "reference.faiss", plan, shard_rows=6000)

    written, real_write = [], ann._write_index

    def write_then_maybe_die(index, path):
        if path.name.endswith("shard00002") and not written.count("killed"):
            written.append("killed")
            raise KeyboardInterrupt("simulated kill")
        written.append(path.name)
        real_write(index, path)

    monkeypatch.setattr(ann, "_write_index", write_then_maybe_die)
    with pytest.raises(KeyboardInterrupt):
        ann.build_index(memmapped, tmp_path / "sharded.faiss", plan, shard_rows=1500)
    assert written == ["sharded.faiss.trained", "sharded.faiss.shard00000", "sharded.faiss.shard00001", "killed"]
    built = ann.build_index(memmapped, tmp_path / "sharded.faiss", plan, shard_rows=1500)
    # The rerun trains nothing and adds only shards 2 and 3, then merges all four on disk.
    assert written[4:] == ["sharded.faiss.shard00002", "sharded.faiss.shard00003", "sharded.faiss"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("sharded")) == [
        "sharded.faiss", "sharded.faiss.ivfdata", "sharded.faiss.tuning_rows.npy"
    ]
    merged = ann.read_index(tmp_path / "sharded.faiss")
    invlists = faiss.extract_index_ivf(merged).invlists
    assert merged.ntotal == 6000 and "OnDisk" in type(faiss.downcast_InvertedLists(invlists)).__name__
    # Merging shards gives the index one shard would have: same codes, so the same results and recall.
    whole = ann.read_index(tmp_path / "reference.faiss")
    settings = recall.SearchSettings(nprobe=8, rerank_factor=2)
    for index in (merged, whole):
        settings.apply(index)
    got, want = (recall.search_reranked(index, memmapped, vectors[:200], 10, settings) for index in (merged, whole))
    np.testing.assert_array_equal(got[1], want[1])
    assert set(np.unique(got[1]) // 1500) == {0, 1, 2, 3}
    assert built["recall_at_10"] == reference["recall_at_10"] and built["nprobe"] == reference["nprobe"]


def test_sharded_embedding_across_ranks_resumes_a_killed_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "POLL_SECONDS", 0.05)
    captions = make_captions(40)
    common = dict(batch_size=4, shard_rows=8, world_size=2)  # shards 0, 2, 4 on rank 0; 1, 3 on rank 1
    reference = build_caption_index(captions, tmp_path / "reference", vlm_encoder=LookupEncoder(captions, 8, seed=0),
                                    text_encoder=LookupEncoder(captions, 6, seed=1), batch_size=4, shard_rows=8)

    killed = FailingEncoder(captions, 8, seed=0, fail_at=2)  # rank 1 finishes one batch of shard 1
    with pytest.raises(KeyboardInterrupt):
        build_caption_index(captions, tmp_path / "index", vlm_encoder=killed, text_encoder=LookupEncoder(captions, 6, seed=1), rank=1, **common)
    assert shards.rows_done(tmp_path / "index", 1) == 4 and shards.rows_done(tmp_path / "index", 3) == 0

    encoders = {rank: (LookupEncoder(captions, 8, seed=0), LookupEncoder(captions, 6, seed=1)) for rank in (0, 1)}
    results = {}

    def run(rank):
        vlm, text = encoders[rank]
        results[rank] = build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text, rank=rank, **common)

    rank0 = threading.Thread(target=run, args=(0,))
    rank0.start()
    run(1)
    rank0.join(timeout=120)
    assert encoders[0][0].calls == 6  # three shards of two batches
    assert encoders[1][0].calls == 3  # the rest of shard 1, then shard 3
    for rank in (0, 1):
        np.testing.assert_array_equal(results[rank].embeddings(VLM_SPACE), reference.embeddings(VLM_SPACE))
        assert results[rank].meta["complete"] and list(results[rank].captions) == captions
    with pytest.raises(ValueError, match=r"rank must lie in \[0, world_size\), got rank 2 of world_size 2"):
        build_caption_index(captions, tmp_path / "index", vlm_encoder=None, text_encoder=None, rank=2, **common)


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-index-memory", "lots"], "max_index_memory must be a positive size like '4GB' or '512MB', got 'lots'"),
    (["--image-temperature", "50"], "image_temperature applies to formula='paper' only"),
])
def test_zeroshot_reports_index_and_core_settings_in_one_line(tmp_path, capsys, flags, message):
    from test_core import write_tiny_circuits

    from lowres_vision.cli import main

    write_tiny_circuits(tmp_path / "lite")
    argv = ["zeroshot", "--task", "circuits", "--data-root", str(tmp_path / "lite"), "--tiny", "--out", str(tmp_path / "run"), *flags]
    assert main(argv) == 2
    stderr = capsys.readouterr().err  # progress bars, then the error
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("lowres-vision zeroshot: error: ") and message in stderr.strip().splitlines()[-1]


def test_index_command_embeds_several_corpus_files_in_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lowres_vision.cli import main

    (tmp_path / "a.txt").write_text("a red gear\nan old map of a harbour\n")
    pq.write_table(pa.table({"text": ["a circuit with an LED", None, "a bolt"]}), tmp_path / "b.parquet")
    out = tmp_path / "idx"
    argv = ["index", "--captions", str(tmp_path / "a.txt"), str(tmp_path / "b.parquet"), "--caption-column", "text",
            "--out", str(out), "--tiny", "--shard-rows", "3", "--caption-batch-size", "2"]
    assert main(argv) == 0
    index = CaptionIndex.load(out)
    assert list(index.captions) == ["a red gear", "an old map of a harbour", "a circuit with an LED", "a bolt"]
    assert sorted(path.name for path in (out / "progress").iterdir()) == ["00000.json", "00001.json"]
    assert [shards.rows_done(out, shard) for shard in (0, 1)] == [3, 1]
    assert index.meta["shard_rows"] == 3 and index.meta["indices"][VLM_SPACE]["kind"] == "flat"


def write_corpus_files(root):
    """The same seven captions over a text, a CSV and a Parquet file (two row groups), with the blanks, stray
    whitespace, quoted newlines and nulls that reading drops or collapses; and those captions, written out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "a.txt").write_text("a red  gear\n\n  an old map\u2028of a harbour \n")
    (root / "b.csv").write_text('id,caption\n1,"a circuit,\nwith an LED"\n2,\n3,   \n4,a bolt\n')
    pq.write_table(pa.table({"caption": ["one", None, " two  words ", "three"]}), root / "c.parquet", row_group_size=2)
    return ["a red gear", "an old map", "of a harbour", "a circuit, with an LED", "a bolt", "one", "two words", "three"]


def test_streamed_corpus_files_build_the_index_the_in_memory_list_does(tmp_path, monkeypatch):
    import hashlib

    from lowres_vision.core import CaptionFiles, corpus

    monkeypatch.setattr(corpus, "PARQUET_BATCH_ROWS", 1)  # one record batch per row
    expected = write_corpus_files(tmp_path)
    files = CaptionFiles((tmp_path / "a.txt", tmp_path / "b.csv", tmp_path / "c.parquet"), column="caption")
    assert list(files) == expected
    def encoders():
        return {"vlm_encoder": LookupEncoder(expected, 8, seed=0), "text_encoder": LookupEncoder(expected, 6, seed=1)}

    streamed = build_caption_index(files, tmp_path / "streamed", batch_size=3, shard_rows=5, **encoders())
    in_memory = build_caption_index(expected, tmp_path / "in-memory", batch_size=3, shard_rows=5, **encoders())

    # The fingerprint is the one a list of these captions always had: SHA-256 of each caption and a newline.
    fingerprint = hashlib.sha256("".join(caption + "\n" for caption in expected).encode()).hexdigest()
    assert streamed.meta["fingerprint"] == in_memory.meta["fingerprint"] == fingerprint and streamed.meta["num_captions"] == 8
    assert list(streamed.captions) == list(in_memory.captions) == expected
    assert (tmp_path / "streamed" / "captions.txt").read_bytes() == (tmp_path / "in-memory" / "captions.txt").read_bytes()
    for space in (VLM_SPACE, TEXT_SPACE):
        np.testing.assert_array_equal(streamed.embeddings(space), in_memory.embeddings(space))
    # The directory is reused for the same captions, whichever way they come, and refused for others.
    again = LookupEncoder(expected, 8, seed=0)
    build_caption_index(expected, tmp_path / "streamed", vlm_encoder=again, text_encoder=LookupEncoder(expected, 6, seed=1))
    assert again.calls == 0  # finished: batch and shard sizes no longer matter, even to re-index it
    hnsw = build_caption_index(expected, tmp_path / "streamed", vlm_encoder=again, text_encoder=LookupEncoder(expected, 6, seed=1),
                               index_kind="hnsw", shard_rows=2)
    assert again.calls == 0 and hnsw.meta["indices"][VLM_SPACE]["kind"] == "hnsw" and hnsw.meta["shard_rows"] == 5
    with pytest.raises(ValueError, match="another fingerprint"):
        build_caption_index(CaptionFiles((tmp_path / "a.txt",)), tmp_path / "streamed", **encoders())
    with pytest.raises(ValueError, match=r"caption 1 holds a newline \('b\\nc'\)"):
        build_caption_index(["a", "b\nc"], tmp_path / "newline", **encoders())
    with pytest.raises(ValueError, match=r"c\.parquet: no column 'text' \(columns: \['caption'\]\)"):
        CaptionFiles((tmp_path / "a.txt", tmp_path / "c.parquet"), column="text")


def test_streaming_holds_line_ends_not_captions(tmp_path, monkeypatch):
    import tracemalloc

    from lowres_vision.core import CaptionFiles, corpus

    monkeypatch.setattr(corpus, "OFFSET_CHUNK_BYTES", 1 << 18)
    count = 100_000
    (tmp_path / "big.txt").write_text("".join(f"caption {i:06d} of a synthetic corpus, padded to some length\n" for i in range(count)))
    size = (tmp_path / "big.txt").stat().st_size  # 6.4 MB; as a list of str about 14 MB
    tracemalloc.start()
    try:
        _, written = corpus.stream_corpus(CaptionFiles((tmp_path / "big.txt",)), tmp_path / "captions.txt")
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        lines = corpus.CaptionLines(tmp_path / "captions.txt")
        _, lines_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == len(lines) == count and lines[count - 1] == f"caption {count - 1:06d} of a synthetic corpus, padded to some length"
    assert streaming_peak < size / 20
    # The int64 line ends (0.8 MB), their chunks as they are concatenated, and one 256 KB chunk of the file compared.
    assert lines_peak < 2 * 8 * count + 2 * (1 << 18)


class KilledCorpus(list):
    """Yields its first `killed_after` captions, then is killed."""

    killed_after = 3

    def __iter__(self):
        yield from self[: self.killed_after]
        raise KeyboardInterrupt("simulated kill")


def test_a_killed_captions_writer_leaves_nothing_taken_for_a_finished_corpus(tmp_path, monkeypatch):
    import fcntl

    captions = make_captions(10)
    def encoders():
        return {"vlm_encoder": LookupEncoder(captions, 8, seed=0), "text_encoder": LookupEncoder(captions, 6, seed=1)}

    directory = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_caption_index(KilledCorpus(captions), directory, **encoders())
    assert sorted(path.name for path in directory.iterdir()) == [".captions.lock"]  # neither captions.txt nor its metadata
    # A writer killed harder (SIGKILL) leaves its partial temporary file. While a writer holds the lock the other
    # ranks wait, whatever temporary files they see ...
    partial = directory / ".captions.txt.4242-1.tmp"
    partial.write_text("".join(caption + "\n" for caption in captions[:3]))
    waited = []

    def wait_once(ready, what):
        waited.append((what, ready()))
        raise TimeoutError("stop waiting")

    with open(directory / ".captions.lock") as lock, monkeypatch.context() as patched:
        fcntl.flock(lock, fcntl.LOCK_EX)
        patched.setattr(shards, "wait_until", wait_once)
        with pytest.raises(TimeoutError):
            build_caption_index(captions, directory, rank=1, world_size=2, **encoders())
    assert waited == [("another rank writing captions.txt", False)] and not (directory / "captions.txt").exists()
    # ... and once the lock is free (the system frees a killed holder's), the next rank deletes the partial file and
    # writes the whole corpus.
    index = build_caption_index(captions, directory, **encoders())
    assert list(index.captions) == captions and not partial.exists()
    reference = build_caption_index(captions, tmp_path / "reference", **encoders())
    assert index.meta["fingerprint"] == reference.meta["fingerprint"]
    np.testing.assert_array_equal(index.embeddings(VLM_SPACE), reference.embeddings(VLM_SPACE))


def test_zeroshot_searches_an_index_built_by_the_index_command(tmp_path, capsys):
    import json

    from test_core import write_tiny_circuits

    from lowres_vision.cli import main

    (tmp_path / "a.txt").write_text("an amplifier circuit\na map of a harbour\n")
    (tmp_path / "b.csv").write_text("caption\na power supply schematic\nan LED driver\na gear\n")
    out = tmp_path / "idx"
    assert main(["index", "--captions", str(tmp_path / "a.txt"), str(tmp_path / "b.csv"), "--caption-column", "caption",
                 "--out", str(out), "--tiny", "--shard-rows", "2", "--caption-batch-size", "2"]) == 0
    write_tiny_circuits(tmp_path / "lite")
    common = ["zeroshot", "--task", "circuits", "--data-root", str(tmp_path / "lite"), "--tiny", "--method", "core", "--k", "2",
              "--index-dir", str(out)]
    # Without --captions the index's own corpus is searched: nothing is embedded again (other batch and shard sizes).
    embeddings_before = np.load(out / "vlm.npy")
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["captions"] == 5
    assert metrics["class_captions"]["LED driver"][0] == "an LED driver"  # MiniLM text->text retrieval over the index
    np.testing.assert_array_equal(np.load(out / "vlm.npy"), embeddings_before)
    # Another corpus is refused in one line.
    assert main([*common, "--captions", str(tmp_path / "b.csv"), "--caption-column", "caption", "--out", str(tmp_path / "other")]) == 2
    assert "holds an index built with another fingerprint" in capsys.readouterr().err.strip().splitlines()[-1]
