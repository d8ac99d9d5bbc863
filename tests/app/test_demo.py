"""`lowres-vision demo`, `synth` and `plot` end to end on a tiny synthetic benchmark."""

from __future__ import annotations

import json

import pytest

from lowres_vision.cli import main
from lowres_vision.demo import CONFIGURATIONS, DemoSettings, format_table, run_demo, slug

TINY = "0.01"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    docs = root.parent / "docs"
    assert main(["synth", "--out", str(root), "--scale", TINY, "--tasks", "circuits", "historic-maps", "--workers", "1",
                 "--samples-copy", str(docs)]) == 0
    assert sorted(p.name for p in docs.iterdir()) == ["samples_circuits.png", "samples_historic-maps.png"]
    return root


def test_format_table_uses_the_paper_layout():
    results = {
        "Linear probe": {"circuits": {"top1": 12.345, "top5": 40.0}, "historic-maps": {"R@1": 5.0, "R@5": 20.0, "mean_rank": 33.33}},
        "+ All": {"circuits": {"top1": 20.0, "top5": 50.05}},
    }
    assert format_table(results, ["circuits", "historic-maps"]) == (
        "| Configuration | Circuits Top-1 (%) ↑ | Circuits Top-5 (%) ↑ | Maps R@1 ↑ | Maps R@5 ↑ | Maps MnR ↓ |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| Linear probe | 12.3 | 40.0 | 5.0 | 20.0 | 33.3 |\n"
        "| + All | 20.0 | 50.0 | – | – | – |"
    )


def test_configurations_are_the_papers_rows():
    assert [slug(name) for name in CONFIGURATIONS] == ["linear-probe", "adaptformer", "tokenization", "domain-attention", "all"]
    assert CONFIGURATIONS["+ All"] == {"adapter": {"kind": "adaptformer"}, "tokenization": {}, "domain_attention": {}}
    with pytest.raises(ValueError, match="tasks"):
        DemoSettings(tasks=["circuit"]).validate()
    with pytest.raises(ValueError, match="configurations"):
        DemoSettings(configurations=["LoRA"]).validate()


def test_demo_command_runs_one_configuration_and_writes_table_and_plots(data_root, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data_root), "--scale", TINY, "--tasks", "circuits",
                 "--configs", "linear-probe", "--epochs", "1", "--image-size", "56"]) == 0
    report = json.loads((out / "results.json").read_text())
    run = out / "circuits" / "linear-probe"
    assert report["results"]["Linear probe"]["circuits"] == json.loads((run / "metrics-test.json").read_text())["metrics"]
    table = (out / "results.md").read_text()
    top1 = report["results"]["Linear probe"]["circuits"]["top1"]
    assert f"| Linear probe | {top1:.1f} |" in table
    assert (out / "results.png").stat().st_size > 0
    # The linear probe is the release's logistic regression: fitted once, no loss curve to draw.
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["confusion_matrix_test.png"]
    assert [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()] == ["run", "fit"]
    # `plot` regenerates the figures of a run into another folder.
    assert main(["plot", str(run), "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["confusion_matrix_test.png"]


def test_demo_all_baselines_on_retrieval(data_root, tmp_path):
    settings = DemoSettings(out=str(tmp_path / "demo"), data_root=str(data_root), scale=float(TINY), tasks=["historic-maps"],
                            configurations=["+ All"], epochs=1, image_size=56)
    results = run_demo(settings)
    metrics = results["+ All"]["historic-maps"]
    assert 0 <= metrics["R@1"] <= metrics["R@5"] <= 100 and metrics["mean_rank"] >= 1
    plots = sorted(p.name for p in (tmp_path / "demo" / "historic-maps" / "all" / "plots").iterdir())
    assert plots == ["domain_attention_maps_visual_transformer_resblocks_2_domain_attention.png", "retrieval_examples_test.png",
                     "subkernel_weights_visual_conv1.png", "training_curves.png"]
