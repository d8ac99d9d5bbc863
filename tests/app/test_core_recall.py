"""Search settings of a compressed caption index: the re-rank depth and nprobe the build tunes where codes
alone are too coarse for the recall target, the cheapest of the settings reaching it, and the first search
raising the depth for its queries."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_core_index import clustered, exact_without_self

from lowres_vision.core import ann, plan_index, recall

pytestmark = pytest.mark.usefixtures("single_thread")

ROWS, DIM = 20_000, 32


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """20k vectors varying along 16 of 32 directions in 500 lists of 1-byte codes: the codes rank a few hundred
    candidates roughly, so 10-recall@10 0.9 needs 16·k of them re-ranked exactly."""
    directory = tmp_path_factory.mktemp("coarse")
    np.save(directory / "vectors.npy", clustered(ROWS, DIM, seed=3, spread=16).numpy())
    vectors = np.load(directory / "vectors.npy", mmap_mode="r")
    # 1-byte codes + 8-byte ids, 500 centroids and 256 codewords of 32 floats: 276,768 bytes.
    plan = plan_index(ROWS, DIM, "ivfpq", "280KB", opq=False)
    assert (plan.factory, plan.nlist, plan.code_bytes) == ("IVF500,PQ1x8np", 500, 1)
    built = ann.build_index(vectors, directory / "index.faiss", plan)
    rows = np.load(ann.tuning_rows_path(directory / "index.faiss"))
    return vectors, plan, built, ann.read_index(directory / "index.faiss"), rows


def bytes_read(nprobe, rerank_factor):
    """Per query: 40 vectors per list of 1-byte codes and 8-byte ids; per candidate, the 4 KB pages a 128-byte
    row at an arbitrary offset lies on (1 + 127/4096 on average)."""
    return nprobe * (ROWS / 500) * (1 + 8) + rerank_factor * 10 * 4096 * (1 + 127 / 4096)


def measured_recall(index, vectors, query_rows, nprobe, rerank_factor, exact=None):
    """10-recall@10 of held-out corpus rows against an exact scan (`exact`, if already found), own row excluded."""
    corpus = np.asarray(vectors)
    exact = exact_without_self(corpus, query_rows) if exact is None else exact
    settings = recall.SearchSettings(nprobe=nprobe, rerank_factor=rerank_factor)
    settings.apply(index)
    ids = recall.search_reranked(index, vectors, corpus[query_rows], 11, settings)[1]
    found = [row_ids[row_ids != row][:10] for row_ids, row in zip(ids, query_rows)]
    return np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact)])


def test_build_reranks_deeper_where_the_codes_fall_short(coarse):
    vectors, _, built, index, rows = coarse
    # Up to 8·k candidates, no nprobe reaches 0.9 (recall plateaus near 0.77); 16·k does at nprobe 8.
    shallow = [r for _, factor, r in built["tuning"] if factor <= 8]
    assert max(shallow) < 0.8
    assert (built["nprobe"], built["rerank_factor"]) == (8, 16)
    assert built["recall_at_10"] >= 0.9
    assert measured_recall(index, vectors, rows, 8, 16) == pytest.approx(built["recall_at_10"])
    # Nothing deeper was measured: re-ranking 32·k alone reads more than the setting found.
    assert max(factor for _, factor, _ in built["tuning"]) == 16
    assert bytes_read(1, 32) > bytes_read(8, 16)


def test_tuning_keeps_the_cheapest_setting_reaching_the_target(coarse):
    vectors, plan, _, index, rows = coarse
    rows = rows[:300]
    # Every depth at every nprobe up to 32, measured here.
    exact = exact_without_self(np.asarray(vectors), rows)
    sweep = {(nprobe, factor): measured_recall(index, vectors, rows, nprobe, factor, exact)
             for factor in (1, 2, 4, 8, 16, 32, 64) for nprobe in (1, 2, 4, 8, 16, 32)}
    for target, expected in ((0.75, (4, 8)), (0.9, (8, 16))):
        tuning = recall.tune_search(index, vectors, plan, rows, target)
        # The cheapest setting reaching the target is the one kept, although deeper re-ranking reaches more.
        cheapest = min((setting for setting, r in sweep.items() if r >= target), key=lambda setting: bytes_read(*setting))
        assert (tuning.settings.nprobe, tuning.settings.rerank_factor) == cheapest == expected
        assert tuning.recall == pytest.approx(sweep[cheapest]) and tuning.recall >= target
        assert max(sweep.values()) > tuning.recall + 0.05
        assert recall._search_cost(plan, tuning.settings) == pytest.approx(bytes_read(*cheapest))
        # Depths whose re-ranking alone reads more than the setting found are not measured.
        assert max(factor for _, factor, _ in tuning.tried) == expected[1]


def test_build_warns_and_keeps_the_best_when_no_setting_reaches_the_target(tmp_path):
    # One cluster varying along all 32 directions: 1-byte codes cannot rank even 64·k candidates well enough.
    np.save(tmp_path / "vectors.npy", clustered(ROWS, DIM, seed=5, clusters=1, spread=32).numpy())
    vectors = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    plan = plan_index(ROWS, DIM, "ivfpq", "280KB", opq=False)
    with pytest.warns(UserWarning, match=r"the IVF500,PQ1x8np index reaches 10-recall@10 (0\.\d+) at best, below the target 0\.9") as caught:
        built = ann.build_index(vectors, tmp_path / "index.faiss", plan)
    # Every depth was tried, and the best recall measured is the one searched at and reported.
    assert sorted({factor for _, factor, _ in built["tuning"]}) == [1, 2, 4, 8, 16, 32, 64]
    best = max(built["tuning"], key=lambda entry: entry[2])
    assert [built["nprobe"], built["rerank_factor"], built["recall_at_10"]] == best and best[1] == 64
    rows = np.load(ann.tuning_rows_path(tmp_path / "index.faiss"))
    index = ann.read_index(tmp_path / "index.faiss")
    assert built["recall_at_10"] == pytest.approx(measured_recall(index, vectors, rows, best[0], 64)) and built["recall_at_10"] < 0.9
    assert f"{built['recall_at_10']:.3f} at best" in str(caught[0].message)


def test_first_search_reranks_deeper_where_more_lists_do_not_help(coarse):
    vectors, plan, built, index, rows = coarse
    corpus = np.asarray(vectors)
    queries = corpus[rows[:32]] + 0.05 * np.random.default_rng(0).standard_normal((32, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]

    def query_recall(settings):
        settings.apply(index)
        ids = recall.search_reranked(index, vectors, queries, 10, settings)[1]
        return np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(ids, exact)])

    # Searched at 4·k candidates, probing more lists gains nothing: the first search re-ranks 16·k instead.
    shallow = recall.SearchSettings(nprobe=8, rerank_factor=4)
    assert query_recall(recall.SearchSettings(nprobe=512, rerank_factor=4)) < 0.7
    with pytest.warns(UserWarning, match=r"reach 10-recall@10 0\.\d+ at the settings tuned on the corpus \(nprobe 8, rerank_factor 4\); "
                                         r"searching with nprobe 8, rerank_factor 16 instead \(0\.9\d\d, target 0\.9\)"):
        verified = recall.verify_search(index, vectors, queries, built, shallow, where="test")
    assert verified == recall.SearchSettings(nprobe=8, rerank_factor=16)
    assert query_recall(recall.SearchSettings(nprobe=8, rerank_factor=8)) < 0.9 <= query_recall(verified)
    # Reaching the target, it leaves the settings as they are and says nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recall.verify_search(index, vectors, queries, built, verified, where="test") == verified
