"""`lowres-vision demo`, `synth` and `plot` end to end on a tiny synthetic benchmark."""

from __future__ import annotations

import json

import pytest

from lowres_vision.cli import main
from lowres_vision.demo import CONFIGURATIONS, DemoSettings, chance_levels, format_table, mean_and_spread, run_demo, slug

TINY = "0.01"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    docs = root.parent / "docs"
    assert main(["synth", "--out", str(root), "--scale", TINY, "--tasks", "circuits", "historic-maps", "--workers", "1",
                 "--samples-copy", str(docs)]) == 0
    assert sorted(p.name for p in docs.iterdir()) == ["samples_circuits.png", "samples_historic-maps.png"]
    return root


def test_format_table_uses_the_paper_layout_with_the_spread_over_seeds():
    results = {
        "Linear probe": {"circuits": {"top1": 12.345, "top5": 40.0}, "historic-maps": {"R@1": 5.0, "R@5": 20.0, "mean_rank": 33.33}},
        "+ All": {"circuits": {"top1": 20.0, "top5": 50.05}},
    }
    spread = {"Linear probe": {"circuits": {"top1": 1.26, "top5": 0.0}}}
    assert format_table(results, ["circuits", "historic-maps"], spread) == (
        "| Configuration | Circuits Top-1 (%) ↑ | Circuits Top-5 (%) ↑ | Maps R@1 ↑ | Maps R@5 ↑ | Maps MnR ↓ |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| Linear probe | 12.3 ± 1.3 | 40.0 ± 0.0 | 5.0 | 20.0 | 33.3 |\n"
        "| + All | 20.0 | 50.0 | – | – | – |"
    )


def test_mean_and_spread_are_the_mean_and_sample_standard_deviation():
    mean, spread = mean_and_spread([{"top1": 10.0, "top5": 30.0, "name": "x"}, {"top1": 14.0, "top5": 30.0, "name": "y"},
                                    {"top1": 18.0, "top5": 36.0, "name": "z"}])
    assert mean == {"top1": 14.0, "top5": 32.0}
    assert spread == {"top1": pytest.approx(4.0), "top5": pytest.approx(12 ** 0.5)}  # sqrt(sum of squares / (n - 1))
    assert mean_and_spread([{"R@1": 3.0}]) == ({"R@1": 3.0}, {"R@1": 0.0})


def test_configurations_are_the_papers_rows():
    assert [slug(name) for name in CONFIGURATIONS] == ["linear-probe", "adaptformer", "tokenization", "domain-attention", "all"]
    assert CONFIGURATIONS["+ All"] == {"adapter": {"kind": "adaptformer"}, "tokenization": {}, "domain_attention": {}}
    with pytest.raises(ValueError, match="tasks"):
        DemoSettings(tasks=["circuit"]).validate()
    with pytest.raises(ValueError, match="configurations"):
        DemoSettings(configurations=["LoRA"]).validate()
    with pytest.raises(ValueError, match="training_seeds"):
        DemoSettings(training_seeds=[1, 1]).validate()


def test_demo_defaults_to_the_shipped_checkpoint_at_its_own_size():
    from lowres_vision.models.backbone import SHIPPED_CHECKPOINT

    assert DemoSettings().resolved_checkpoint == SHIPPED_CHECKPOINT
    assert DemoSettings().resolved_image_size == 70  # the budget's size, below the 112 px it was trained at
    assert DemoSettings(image_size=112).resolved_image_size == 112
    assert DemoSettings(pretrained="laion2b_s34b_b88k").resolved_checkpoint is None
    assert DemoSettings(pretrained="laion2b_s34b_b88k").resolved_image_size == 224


def test_chance_levels_follow_the_test_splits(data_root):
    from lowres_vision.data import load_split

    levels = chance_levels(data_root, ["circuits", "historic-maps"])
    assert levels["circuits"] == {"top1": pytest.approx(100 / 32), "top5": pytest.approx(500 / 32)}
    gallery = len(load_split("historic-maps", data_root, "test").gallery_paths)
    assert levels["historic-maps"] == {"R@1": pytest.approx(100 / gallery), "R@5": pytest.approx(100 * min(5, gallery) / gallery),
                                       "mean_rank": pytest.approx((gallery + 1) / 2)}


def test_demo_command_runs_seeds_and_zero_shot_and_writes_mean_and_spread(data_root, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data_root), "--scale", TINY, "--tasks", "circuits",
                 "--configs", "linear-probe", "--training-seeds", "0", "1", "--epochs", "1", "--image-size", "56"]) == 0
    report = json.loads((out / "results.json").read_text())
    per_seed = [json.loads((out / "circuits" / "linear-probe" / f"seed{k}" / "metrics-test.json").read_text())["metrics"] for k in (0, 1)]
    assert report["per_seed"]["Linear probe"]["circuits"] == per_seed
    top1 = [m["top1"] for m in per_seed]
    assert report["results"]["Linear probe"]["circuits"]["top1"] == pytest.approx(sum(top1) / 2)
    assert report["spread"]["Linear probe"]["circuits"]["top1"] == pytest.approx(abs(top1[0] - top1[1]) / 2 ** 0.5)
    for name, method in (("Zero-shot transfer", "plain"), ("Zero-shot (CoRE)", "core")):
        metrics = json.loads((out / "circuits" / slug(name) / "metrics.json").read_text())
        assert metrics["method"] == method and report["results"][name]["circuits"] == metrics
    assert report["chance"]["circuits"]["top1"] == pytest.approx(100 / 32)
    table = (out / "results.md").read_text()
    mean, spread = report["results"]["Linear probe"]["circuits"]["top1"], report["spread"]["Linear probe"]["circuits"]["top1"]
    assert f"| Linear probe | {mean:.1f} ± {spread:.1f} |" in table and "| Chance | 3.1 | 15.6 |" in table
    assert (out / "results.png").stat().st_size > 0
    run = out / "circuits" / "linear-probe" / "seed0"
    # The linear probe is the release's logistic regression: fitted once, no loss curve to draw.
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["confusion_matrix_test.png"]
    assert [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()] == ["run", "fit"]
    # `plot` regenerates the figures of a run into another folder.
    assert main(["plot", str(run), "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["confusion_matrix_test.png"]


def test_demo_all_baselines_on_retrieval_validate_every_epoch(data_root, tmp_path):
    settings = DemoSettings(out=str(tmp_path / "demo"), data_root=str(data_root), scale=float(TINY), tasks=["historic-maps"],
                            configurations=["+ All"], training_seeds=[0], epochs=2, image_size=56)
    results = run_demo(settings)
    metrics = results["+ All"]["historic-maps"]
    assert 0 <= metrics["R@1"] <= metrics["R@5"] <= 100 and metrics["mean_rank"] >= 1
    run = tmp_path / "demo" / "historic-maps" / "all" / "seed0"
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if json.loads(line)["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all("val/R@1" in e for e in epochs)
    # Zero-shot transfer on a retrieval task is the frozen embeddings' cosine; CoRE runs on circuits only.
    zero_shot = json.loads((tmp_path / "demo" / "historic-maps" / "zero-shot-transfer" / "metrics.json").read_text())
    assert zero_shot["method"] == "plain" and results["Zero-shot transfer"]["historic-maps"] == zero_shot
    assert "Zero-shot (CoRE)" not in results
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["domain_attention_maps_visual_transformer_resblocks_2_domain_attention.png", "retrieval_examples_test.png",
                     "subkernel_weights_visual_conv1.png", "training_curves.png"]
