"""CoRE: caption index (build, resume, faiss kinds), retrieval, enrichment formulas, tuning, zeroshot command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowres_vision.core import (
    TEXT_SPACE, VLM_SPACE, CaptionIndex, EnrichedClasses, EnrichedQueries, Retrieved, build_caption_index, enrich_class_weights,
    enrich_queries, read_captions, tune_alpha_beta, weighted_caption_embedding,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class LookupEncoder:
    """Deterministic stand-in for a text encoder: caption i -> row i of a fixed unit-norm table."""

    def __init__(self, captions, dim, *, seed, name=None):
        generator = torch.Generator().manual_seed(seed)
        table = F.normalize(torch.randn(len(captions), dim, generator=generator), dim=-1)
        self.rows = {caption: row for caption, row in zip(captions, table)}
        self.name = name or f"lookup:{dim}:{seed}"
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return torch.stack([self.rows[text] for text in texts])


class FailingEncoder(LookupEncoder):
    """Raises on call `fail_at`, as if the build were killed there."""

    def __init__(self, *args, fail_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    def encode(self, texts):
        if self.calls + 1 == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return super().encode(texts)


def make_captions(count):
    return [f"caption número {i} — ü" for i in range(count)]  # non-ASCII: captions.txt is read by byte offsets


def build(tmp_path, captions, *, vlm_dim=8, text_dim=6, **kwargs):
    vlm = LookupEncoder(captions, vlm_dim, seed=0)
    text = LookupEncoder(captions, text_dim, seed=1)
    return build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text, **kwargs), vlm, text


def test_search_matches_brute_force(tmp_path):
    captions = make_captions(50)
    index, vlm, _ = build(tmp_path, captions, batch_size=16)
    corpus = torch.stack([vlm.rows[c] for c in captions]).numpy()
    queries = F.normalize(torch.randn(7, 8, generator=torch.Generator().manual_seed(2)), dim=-1).numpy()
    scores, ids = index.search(VLM_SPACE, queries, k=10)
    expected = queries @ corpus.T
    expected_ids = np.argsort(-expected, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, expected_ids, axis=1), rtol=1e-5, atol=1e-6)
    assert index.meta["indices"][VLM_SPACE]["kind"] == "flat"


def test_retrieve_drops_near_duplicates_greedily_in_rank_order(tmp_path):
    # Four captions along the x axis of the "vlm" space: 0 and 1 are near-duplicates (cos 0.99),
    # 2 is close to 1 (cos ~0.96) but not to 0 (cos ~0.92), 3 is distinct.
    captions = ["a", "b", "c", "d"]
    angles = [0.0, math.acos(0.99), math.acos(0.99) + math.acos(0.96), 1.5]
    vlm = LookupEncoder(captions, 2, seed=0)
    vlm.rows = {c: torch.tensor([math.cos(t), math.sin(t)]) for c, t in zip(captions, angles)}
    text = LookupEncoder(captions, 3, seed=1)
    index = build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text)
    query = torch.tensor([[1.0, 0.0]])
    retrieved = index.retrieve(VLM_SPACE, query, k=4, duplicate_threshold=0.94)
    # Rank order a, b, c, d: b duplicates a; c only duplicates the dropped b, so it stays.
    np.testing.assert_array_equal(retrieved.ids, [[0, -1, 2, 3]])
    np.testing.assert_array_equal(retrieved.mask, [[True, False, True, True]])
    assert retrieved.scores[0, 1] == -np.inf
    np.testing.assert_allclose(retrieved.scores[0, [0, 2, 3]], np.cos([angles[0], angles[2], angles[3]]), atol=1e-6)
    kept = index.retrieve(VLM_SPACE, query, k=4, duplicate_threshold=None)
    assert kept.mask.all()
    assert retrieved.caption_lists(index.captions)[0][1][0] == "c"


def test_weighted_caption_embedding_hand_computed():
    caption_embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    retrieved = Retrieved(
        ids=np.array([[2, 0, -1], [-1, -1, -1]]),
        scores=np.array([[0.5, 0.3, -np.inf], [-np.inf] * 3], dtype=np.float32),
        mask=np.array([[True, True, False], [False] * 3]),
    )
    # τ = 1: weights softmax(0.5, 0.3) = (e^0.2, 1) / (e^0.2 + 1).
    w = math.exp(0.2) / (math.exp(0.2) + 1)
    result = weighted_caption_embedding(retrieved, caption_embeddings, temperature=1.0)
    torch.testing.assert_close(result, torch.tensor([[0.6 * w + (1 - w), 0.8 * w], [0.0, 0.0]]))
    # τ = 100 flattens the weights towards the plain mean.
    flat = weighted_caption_embedding(retrieved, caption_embeddings, temperature=100.0)
    w = math.exp(0.002) / (math.exp(0.002) + 1)
    torch.testing.assert_close(flat[0], torch.tensor([0.6 * w + (1 - w), 0.8 * w]))
    # No temperature: the raw scores are the weights, 0.5·(0.6, 0.8) + 0.3·(1, 0).
    raw = weighted_caption_embedding(retrieved, caption_embeddings, temperature=None)
    torch.testing.assert_close(raw, torch.tensor([[0.6, 0.4], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="temperature"):
        weighted_caption_embedding(retrieved, caption_embeddings, temperature=0.0)


def test_enrichment_formulas_hand_computed():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    retrieved = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    # Paper Eq. 5: 0.25·W_T + 0.75·W.
    torch.testing.assert_close(enrich_class_weights(weights, retrieved, 0.25, "paper"), torch.tensor([[0.75, 0.5], [0.5, 0.75]]))
    # Release: norm(0.25·norm(W_T) + 0.75·W) = norm(0.75, 0.25).
    unit = 1 / math.sqrt(0.75**2 + 0.25**2)
    torch.testing.assert_close(
        enrich_class_weights(weights, retrieved, 0.25, "release"), torch.tensor([[0.75 * unit, 0.25 * unit], [0.25 * unit, 0.75 * unit]])
    )
    with pytest.raises(ValueError, match="alpha must lie in"):
        enrich_class_weights(weights, retrieved, 1.5)
    with pytest.raises(ValueError, match="formula"):
        enrich_class_weights(weights, retrieved, 0.5, "other")


def test_query_mix_weighs_the_retrieved_side_by_beta():
    # β = 0.25 is not symmetric: swapping β and 1−β moves z⁺ to the other side of the midpoint.
    queries = torch.tensor([[0.6, 0.8]])
    captions = torch.tensor([[0.5, 0.0]])
    # Paper Eq. 7: 0.25·z_T + 0.75·z = (0.125 + 0.45, 0.6).
    torch.testing.assert_close(enrich_queries(queries, captions, 0.25, "paper"), torch.tensor([[0.575, 0.6]]))
    # Release: norm(0.75·z + 0.25·norm(z_T)) = norm(0.45 + 0.25, 0.6).
    torch.testing.assert_close(enrich_queries(queries, captions, 0.25, "release"), torch.tensor([[0.7, 0.6]]) / math.hypot(0.7, 0.6))
    with pytest.raises(ValueError, match=r"beta mixing needs equal shapes, got \(1, 2\) and \(1, 3\)"):
        enrich_queries(queries, torch.zeros(1, 3), 0.5)


def explicit_core(tmp_path, formula, **config):
    """CoRE over three captions with hand-picked embeddings (see test_core_logits_hand_computed)."""
    from lowres_vision.core import CoRE, CoREConfig

    captions = ["a", "b", "c"]
    vlm = LookupEncoder(captions, 2, seed=0, name="vlm")
    vlm.rows = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.6, 0.8]),
                "Z x": torch.tensor([0.8, 0.6]), "Z y": torch.tensor([0.6, 0.8])}
    text = LookupEncoder(captions, 2, seed=1, name="text")
    text.rows = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.8, 0.6]),
                 "R x": torch.tensor([1.0, 0.0]), "R y": torch.tensor([0.0, 1.0])}
    index = build_caption_index(captions, tmp_path / f"index-{formula}", vlm_encoder=vlm, text_encoder=text)
    method = CoRE(index, vlm, text, CoREConfig(k=2, alpha=0.3, beta=0.25, duplicate_threshold=None, formula=formula, **config))
    return method, method.classes(["x", "y"], ["Z {}"], "R {}"), method.queries(torch.tensor([[0.8, 0.6], [0.0, 1.0]]))


@pytest.mark.parametrize("formula", ["release", "paper"])
def test_core_logits_hand_computed(tmp_path, formula):
    method, classes, queries = explicit_core(tmp_path, formula)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    softmax = lambda s, tau: np.exp(np.asarray(s) / tau) / np.exp(np.asarray(s) / tau).sum()  # noqa: E731
    a, b, c = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.6, 0.8])
    W = np.array([[0.8, 0.6], [0.6, 0.8]])
    # Text->text, k = 2: "R x" finds a (cos 1) and c (0.8); "R y" finds b (1) and c (0.6).
    # Image->text: z1 = (0.8, 0.6) finds c (0.96) and a (0.8); z2 = (0, 1) finds b (1) and c (0.8).
    np.testing.assert_array_equal(classes.retrieved.ids, [[0, 2], [1, 2]])
    np.testing.assert_array_equal(queries.retrieved.ids, [[2, 0], [1, 2]])
    z = np.array([[0.8, 0.6], [0.0, 1.0]])
    alpha, beta = 0.3, 0.25
    if formula == "release":
        W_T = np.stack([unit(softmax([1.0, 0.8], 0.01) @ [a, c]), unit(softmax([1.0, 0.6], 0.01) @ [b, c])])
        W_plus = np.stack([unit(alpha * t + (1 - alpha) * w) for t, w in zip(W_T, W)])
        z_T = np.stack([unit(0.96 * c + 0.8 * a), unit(1.0 * b + 0.8 * c)])
        z_plus = np.stack([unit((1 - beta) * q + beta * t) for q, t in zip(z, z_T)])
    else:
        W_T = np.stack([softmax([1.0, 0.8], 1.0) @ [a, c], softmax([1.0, 0.6], 1.0) @ [b, c]])
        W_plus = alpha * W_T + (1 - alpha) * W
        z_T = np.stack([softmax([0.96, 0.8], 100.0) @ [c, a], softmax([1.0, 0.8], 100.0) @ [b, c]])
        z_plus = beta * z_T + (1 - beta) * z
    expected = z_plus @ W_plus.T
    torch.testing.assert_close(method.logits(classes, queries), torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-5)
    # The release's image branch is linear in the scores: z_T (before its norm) is 0.96·c + 0.8·a exactly.
    if formula == "release":
        torch.testing.assert_close(queries.retrieved_embeddings[0], torch.tensor([0.576 + 0.8, 0.768]))


def test_core_temperatures_follow_the_formula(tmp_path):
    from lowres_vision.core import CoREConfig

    assert (CoREConfig().text_tau, CoREConfig().image_tau) == (0.01, None)
    assert (CoREConfig(formula="paper").text_tau, CoREConfig(formula="paper").image_tau) == (1.0, 100.0)
    # A set τ_t2t replaces the formula's: τ = 1 under the release mixes a and c by softmax(1, 0.8).
    method, classes, _ = explicit_core(tmp_path, "release", text_temperature=1.0)
    w = math.exp(0.2) / (math.exp(0.2) + 1)
    torch.testing.assert_close(classes.retrieved_weights[0], torch.tensor([w + (1 - w) * 0.6, (1 - w) * 0.8]))
    with pytest.raises(ValueError, match="image_temperature applies to formula='paper' only"):
        CoREConfig(image_temperature=50.0)


def test_tune_alpha_beta_picks_smallest_sufficient_beta():
    # z = (0.8, 0.6) of class 1 is misclassified alone; z⁺ = β(0, 1) + (1−β)z is right iff β > 1/6.
    eye = torch.eye(2)
    classes = EnrichedClasses(eye, eye.clone(), retrieved=None)
    queries = EnrichedQueries(torch.tensor([[0.8, 0.6], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), retrieved=None)
    result = tune_alpha_beta(classes, queries, [1, 0], formula="paper")
    assert (result.alpha, result.beta, result.top1) == (0.1, 0.2, 100.0)
    np.testing.assert_allclose(result.accuracy[:, 0], 50.0)
    np.testing.assert_allclose(result.accuracy[:, 1:], 100.0)
    with pytest.raises(ValueError, match="labels of shape"):
        tune_alpha_beta(classes, queries, [1, 0, 1])


def test_build_resumes_after_interruption(tmp_path):
    captions = make_captions(40)
    reference, _, _ = build(tmp_path / "reference", captions, batch_size=8)

    vlm = FailingEncoder(captions, 8, seed=0, fail_at=4)  # batches 1-3 complete, the 4th is killed
    text = LookupEncoder(captions, 6, seed=1)
    with pytest.raises(KeyboardInterrupt):
        build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm, text_encoder=text, batch_size=8)
    assert json.loads((tmp_path / "index" / "progress" / "00000.json").read_text()) == {"rows_done": 24}
    with pytest.raises(RuntimeError, match="unfinished"):
        CaptionIndex.load(tmp_path / "index")

    vlm_resumed, text_resumed = LookupEncoder(captions, 8, seed=0), LookupEncoder(captions, 6, seed=1)
    index = build_caption_index(captions, tmp_path / "index", vlm_encoder=vlm_resumed, text_encoder=text_resumed, batch_size=8)
    assert vlm_resumed.calls == text_resumed.calls == 2  # only batches 4 and 5
    for space in (VLM_SPACE, TEXT_SPACE):
        assert isinstance(index.embeddings(space), np.memmap)
        np.testing.assert_array_equal(index.embeddings(space), reference.embeddings(space))
    assert list(index.captions) == captions and index.captions[-2:] == captions[-2:] and index.captions[3] == captions[3]

    # A finished index is loaded, not rebuilt; another corpus in the same directory is refused.
    again = LookupEncoder(captions, 8, seed=0)
    build_caption_index(captions, tmp_path / "index", vlm_encoder=again, text_encoder=text_resumed, batch_size=8)
    assert again.calls == 0
    # Another index kind re-indexes the stored embeddings without embedding anything again.
    hnsw = build_caption_index(captions, tmp_path / "index", vlm_encoder=again, text_encoder=text_resumed, batch_size=8, index_kind="hnsw")
    assert again.calls == 0 and hnsw.meta["indices"][VLM_SPACE]["kind"] == "hnsw"
    np.testing.assert_array_equal(hnsw.search(VLM_SPACE, reference.embeddings(VLM_SPACE)[:3], k=1)[1].ravel(), [0, 1, 2])
    with pytest.raises(ValueError, match="another fingerprint"):
        build_caption_index(captions[:-1], tmp_path / "index", vlm_encoder=again, text_encoder=text_resumed, batch_size=8)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_against_flat(tmp_path, kind):
    # 4000 captions in 32 clusters (embeddings of real captions are clustered, not isotropic),
    # queries near the data. The search is tuned to 10-recall@10 0.95 on held-out corpus rows;
    # bound: recall@10 of these other queries vs exact search >= 0.9.
    captions = make_captions(4000)
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(32, 32, generator=generator)
    table = F.normalize(centres[torch.arange(4000) % 32] + 0.5 * torch.randn(4000, 32, generator=generator), dim=-1)
    vlm = LookupEncoder(captions, 32, seed=0)
    vlm.rows = dict(zip(captions, table))
    text = LookupEncoder(captions, 4, seed=1)
    index = build_caption_index(captions, tmp_path / kind, vlm_encoder=vlm, text_encoder=text, batch_size=1000, index_kind=kind,
                                recall_target=0.95)
    assert index.meta["indices"][VLM_SPACE]["kind"] == kind and index.meta["indices"][VLM_SPACE]["recall_at_10"] >= 0.95
    queries = F.normalize(table[:200] + 0.3 * torch.randn(200, 32, generator=generator), dim=-1).numpy()
    _, ids = index.search(VLM_SPACE, queries, k=10)
    exact = np.argsort(-(queries @ table.numpy().T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f}"


def test_clear_errors_for_empty_corpus_and_mismatched_widths(tmp_path):
    from lowres_vision.core import CaptionFiles

    encoders = {"vlm_encoder": LookupEncoder([], 8, seed=0), "text_encoder": LookupEncoder([], 6, seed=1)}
    with pytest.raises(ValueError, match="caption corpus is empty"):
        build_caption_index([], tmp_path / "empty", **encoders)
    (tmp_path / "blank.txt").write_text("\n   \n")
    assert read_captions(tmp_path / "blank.txt") == []
    with pytest.raises(ValueError, match="caption corpus is empty"):
        build_caption_index(CaptionFiles((tmp_path / "blank.txt",)), tmp_path / "empty", **encoders)
    assert [path.name for path in (tmp_path / "empty").iterdir()] == [".captions.lock"]  # nothing written

    captions = make_captions(12)
    index, _, _ = build(tmp_path, captions, batch_size=4)
    with pytest.raises(ValueError, match=r"queries of shape \(3, 5\).*'vlm' space.*8-d embeddings"):
        index.search(VLM_SPACE, torch.zeros(3, 5), k=2)

    # Resuming with an encoder of another width (same name) is refused, naming both widths.
    vlm = FailingEncoder(captions, 8, seed=0, fail_at=2, name="shared")
    text = LookupEncoder(captions, 6, seed=1)
    with pytest.raises(KeyboardInterrupt):
        build_caption_index(captions, tmp_path / "resume", vlm_encoder=vlm, text_encoder=text, batch_size=4)
    wider = LookupEncoder(captions, 16, seed=0, name="shared")
    with pytest.raises(ValueError, match=r"16-d embeddings but the 'vlm' space .* holds 8-d"):
        build_caption_index(captions, tmp_path / "resume", vlm_encoder=wider, text_encoder=text, batch_size=4)


def test_core_refuses_encoders_the_index_was_not_built_with(tmp_path):
    from lowres_vision.core import CoRE, CoREConfig

    captions = make_captions(5)
    index, vlm, text = build(tmp_path, captions)
    CoRE(index, vlm, text)
    with pytest.raises(ValueError, match=r"'text' space .* was built with lookup:6:1, not lookup:6:7"):
        CoRE(index, vlm, LookupEncoder(captions, 6, seed=7))
    with pytest.raises(ValueError, match="beta must lie in"):
        CoREConfig(beta=1.5)
    with pytest.raises(ValueError, match="image_temperature must be > 0"):
        CoREConfig(image_temperature=0, formula="paper")


def test_read_captions_from_csv_and_parquet(tmp_path):
    (tmp_path / "corpus.csv").write_text('url,caption\nx,"a gear,\nwith teeth"\ny,\nz,a map\n')
    assert read_captions(tmp_path / "corpus.csv", column="caption") == ["a gear, with teeth", "a map"]
    with pytest.raises(ValueError, match="no column 'text'"):
        read_captions(tmp_path / "corpus.csv", column="text")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, " two  words "]}), tmp_path / "corpus.parquet")
    assert read_captions(tmp_path / "corpus.parquet", column="text") == ["one", "two words"]


def test_minilm_text_encoder_is_384d_unit_norm_and_semantic():
    from lowres_vision.core import default_text_encoder, encode_queries

    encoder = default_text_encoder()
    embeddings = encoder.encode(["a circuit diagram of an audio amplifier", "schematic of a simple amplifier circuit", "a historic map of a harbour"])
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    torch.testing.assert_close(encode_queries(encoder, ["a historic map of a harbour"])[0], embeddings[2])

    # Pooling ignores padding: a batch of unequal lengths gives each text's unpadded embedding.
    from lowres_vision.core import HFTextEncoder

    for pooling in ("mean", "last"):
        pooled = encoder if pooling == "mean" else HFTextEncoder(encoder.model.name_or_path, pooling=pooling)
        texts = ["gear", "an exploded view of a bearing housing assembly"]
        torch.testing.assert_close(pooled.encode(texts), torch.cat([pooled.encode([text]) for text in texts]), atol=1e-5, rtol=1e-5)


def write_tiny_circuits(root, class_names=("amplifier", "LED driver", "power supply"), per_class=2):
    from PIL import Image

    directory = root / "circuits"
    (directory / "data").mkdir(parents=True)
    (directory / "label_map.csv").write_text("id,name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(class_names)))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        rows = []
        for label in range(len(class_names)):
            for shot in range(per_class):
                filename = f"{split}_{label}_{shot}.png"
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(directory / "data" / filename)
                rows.append(f"{len(rows)},{filename},{label}\n")
        (directory / f"{split}_5_shots.csv").write_text("".join(rows))


def run_zeroshot(*argv):
    from lowres_vision.cli import main

    assert main(["zeroshot", *argv]) == 0


def test_zeroshot_command_end_to_end(tmp_path):
    write_tiny_circuits(tmp_path / "lite")
    common = ["--task", "circuits", "--data-root", str(tmp_path / "lite"), "--tiny", "--batch-size", "4"]
    run_zeroshot(*common, "--method", "plain", "--out", str(tmp_path / "plain"))
    run_zeroshot(*common, "--method", "core", "--tune", "--out", str(tmp_path / "core"))
    # α = β = 0 turns CoRE (release formulas) back into plain zero-shot: the same logits.
    run_zeroshot(*common, "--method", "core", "--alpha", "0", "--beta", "0", "--out", str(tmp_path / "core0"),
                 "--index-dir", str(tmp_path / "core" / "caption_index"))

    plain = np.load(tmp_path / "plain" / "predictions.npz")
    np.testing.assert_allclose(np.load(tmp_path / "core0" / "predictions.npz")["logits"], plain["logits"], atol=1e-5)
    np.testing.assert_array_equal(plain["labels"], [0, 0, 1, 1, 2, 2])
    assert list(plain["class_names"]) == ["amplifier", "LED driver", "power supply"]

    metrics = json.loads((tmp_path / "core" / "metrics.json").read_text())
    logits = np.load(tmp_path / "core" / "predictions.npz")["logits"]
    assert logits.shape == (6, 3)
    assert metrics["top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == plain["labels"]))
    assert metrics["top5"] == 100.0  # three classes
    assert metrics["alpha"] in [round(0.1 * i, 1) for i in range(1, 11)] and "tuning" in metrics
    # Text->text retrieval runs the real MiniLM over the shipped corpus: each class finds its own captions.
    for name, word in (("amplifier", "amplifier"), ("LED driver", "LED driver"), ("power supply", "power supply")):
        assert word in metrics["class_captions"][name][0]
    index = CaptionIndex.load(tmp_path / "core" / "caption_index")
    assert index.dim(TEXT_SPACE) == 384 and index.dim(VLM_SPACE) == 64 and len(index) == metrics["captions"]
    for figure in ("retrieval_examples.png", "tuning.png"):
        assert (tmp_path / "core" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zeroshot_command_retrieval_task(tmp_path):
    from PIL import Image

    directory = tmp_path / "lite" / "historic-maps"
    (directory / "Satellite").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"sat{i}.png" for i in range(3)] + [f"map{i}.png" for i in range(4)]:
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(directory / "Satellite" / name)
    # Two old maps share sat0: four queries, a gallery of three unique satellite images.
    pairs = "today_satellite_img,old_map_img\nsat0.png,map0.png\nsat1.png,map1.png\nsat0.png,map2.png\nsat2.png,map3.png\n"
    for split in ("train", "test"):
        (directory / f"{split}.csv").write_text(pairs)
    out = tmp_path / "run"
    run_zeroshot("--task", "historic-maps", "--data-root", str(tmp_path / "lite"), "--tiny", "--method", "core", "--tune", "--out", str(out))

    predictions = np.load(out / "predictions.npz")
    np.testing.assert_array_equal(predictions["ground_truth"], [0, 1, 0, 2])
    assert predictions["query_embeddings"].shape == (4, 64) and predictions["gallery_embeddings"].shape == (3, 64)
    # A random tiny model puts all images close together: bound the ranks allowing float ties.
    similarity = predictions["query_embeddings"] @ predictions["gallery_embeddings"].T
    matching = similarity[np.arange(4), predictions["ground_truth"]][:, None]
    best_ranks, worst_ranks = 1 + (similarity > matching + 1e-5).sum(1), 1 + (similarity > matching - 1e-5).sum(1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 100 * np.mean(worst_ranks == 1) - 1e-3 <= metrics["R@1"] <= 100 * np.mean(best_ranks == 1) + 1e-3
    assert worst_ranks.mean() + 1e-3 >= metrics["mean_rank"] >= best_ranks.mean() - 1e-3
    assert metrics["R@5"] == 100.0  # a gallery of three
    assert metrics["beta"] in [round(0.1 * i, 1) for i in range(1, 11)]
    assert (out / "retrieval_examples.png").is_file()


def test_prompt_templates():
    from lowres_vision.core import default_templates, fill_templates

    assert default_templates("circuits") == (("A circuit diagram of a {}.",), "A photo of a {}.")
    assert default_templates("circuits", "lite") == (("a circuit diagram of {}",), "A photo of a {}.")
    assert fill_templates(default_templates("circuits", "lite")[0], ["LED", "amplifier"]) == [["a circuit diagram of LED", "a circuit diagram of amplifier"]]
    with pytest.raises(ValueError, match="exactly one"):
        fill_templates(["{} and {}"], ["x"])


def test_zeroshot_command_symmetric_retrieval_averages_both_directions(tmp_path):
    from PIL import Image

    directory = tmp_path / "lite" / "mechanical-drawing"
    (directory / "data").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for item in range(3):
        for side in "ab":
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(directory / "data" / f"{item}-{side}.png")
    (directory / "test.csv").write_text("id\n0\n1\n2\n")
    out = tmp_path / "run"
    run_zeroshot("--task", "mechanical-drawing", "--data-root", str(tmp_path / "lite"), "--tiny", "--method", "plain", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("R@1", "R@5", "mean_rank", "median_rank"):
        assert metrics[name] == pytest.approx((metrics[f"query_to_gallery/{name}"] + metrics[f"gallery_to_query/{name}"]) / 2)
    assert metrics["R@5"] == 100.0
    predictions = np.load(out / "predictions.npz")
    scores = predictions["gallery_embeddings"] @ predictions["query_embeddings"].T  # render -> drawing, paired by row
    assert metrics["gallery_to_query/mean_rank"] == pytest.approx((1 + (scores > np.diag(scores)[:, None]).sum(1)).mean())
