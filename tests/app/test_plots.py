"""Plots from a fabricated run directory, and the numbers they are drawn from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lowres_vision import plots


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def run_dir(tmp_path):
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    save_file({
        "visual.conv1.logits": rng.normal(size=49).astype(np.float32),
        "visual.transformer.resblocks.1.domain_attention.maps": rng.normal(size=(4, 8, 8)).astype(np.float32),
        "visual.transformer.resblocks.1.domain_attention.mix_logits": np.ones(4, np.float32),
        "visual.transformer.resblocks.1.domain_attention.alpha": np.ones((), np.float32),
        "head.weight": rng.normal(size=(3, 16)).astype(np.float32),
    }, str(run / "trainable.safetensors"))
    records = [{"event": "step", "epoch": e, "step": s, "loss": 2.0 / (1 + s)} for e in range(2) for s in range(e * 3, e * 3 + 3)]
    records += [{"event": "epoch", "epoch": e, "step": 3 * e + 2, "loss": 1.0 / (1 + e), "val/top1": 30.0 + 10 * e, "val/top5": 80.0} for e in range(2)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    logits = np.eye(3)[[0, 1, 2, 2, 1]] * 5.0
    np.savez(run / "predictions-test.npz", logits=logits, labels=np.array([0, 1, 2, 0, 1]), class_names=np.array(["a", "b", "c"]))
    np.savez(run / "predictions-val.npz", logits=logits[:3], labels=np.array([0, 1, 2]), class_names=np.array(["a", "b", "c"]))
    return run


def test_plot_run_writes_every_applicable_plot(run_dir):
    written = plots.plot_run(run_dir)
    names = sorted(p.name for p in written)
    assert names == [
        "confusion_matrix_test.png",
        "confusion_matrix_val.png",
        "domain_attention_maps_visual_transformer_resblocks_1_domain_attention.png",
        "subkernel_weights_visual_conv1.png",
        "training_curves.png",
    ]
    for path in written:
        width, height = _png_size(path)
        assert 100 < width < 3000 and 100 < height < 3000


def test_plot_run_draws_retrieval_examples(tmp_path):
    run = tmp_path / "retrieval"
    run.mkdir()
    images = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(path)
        images.append(str(path))
    gallery = np.eye(6, 8)
    queries = gallery[[0, 1, 2, 3, 4, 5]] + 0.01
    np.savez(run / "predictions-test.npz", query_embeddings=queries, gallery_embeddings=gallery, ground_truth=np.array([0, 1, 2, 3, 5, 4]),
             query_paths=np.array(images), gallery_paths=np.array(images))
    (path,) = plots.plot_run(run, tmp_path / "out")
    assert path == tmp_path / "out" / "retrieval_examples_test.png" and _png_size(path)[0] > 300


def test_confusion_matrix_counts_by_hand():
    counts = plots.confusion_matrix([0, 1, 2, 2, 1], [0, 1, 2, 0, 1], 3)
    np.testing.assert_array_equal(counts, [[1, 0, 1], [0, 2, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="same shape"):
        plots.confusion_matrix([0, 1], [0], 3)


def test_wrong_shapes_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"maps must be \[C, 2h, 2h\]"):
        plots.plot_domain_attention_maps(np.zeros((4, 8)), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="mix_logits must be"):
        plots.plot_domain_attention_maps(np.zeros((4, 8, 8)), np.zeros(3), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="square number"):
        plots.plot_subkernel_weights(np.zeros(48), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="logits must be"):
        plots.plot_confusion_matrix(np.zeros((5, 3)), np.zeros(4), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="ground_truth"):
        plots.plot_retrieval_examples(np.zeros((3, 4)), np.zeros((5, 4)), [0, 1], ["q"] * 3, ["g"] * 5, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.plot_run(tmp_path / "missing")


def test_results_bars(tmp_path):
    results = {
        "linear probe": {"circuits": {"Top-1": 10.0, "Top-5": 30.0}, "historic-maps": {"R@1": 5.0, "MnR": 40.0}},
        "+ all": {"circuits": {"Top-1": 12.0, "Top-5": 33.0}, "historic-maps": {"R@1": 6.0, "MnR": 35.0}},
    }
    assert _png_size(plots.plot_results(results, tmp_path / "results.png"))[0] > 300
