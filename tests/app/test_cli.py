"""`lowres-vision` end to end on a toy LITE folder: train, eval, config files, dry runs, errors."""

from __future__ import annotations

import json

import pytest
from test_data import write_toy_lite

from lowres_vision import cli

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--tiny", "--image-size", "56", "--batch-size", "4", "--lr", "0.01", "--eval-every", "0", "--select", "last"]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["--help"])
    assert exit_code.value.code == 0
    assert {"train", "eval"} <= set(capsys.readouterr().out.split())


def test_train_then_eval(lite_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "--task", "circuits", "--data-root", str(lite_root), "--out", str(run), "--epochs", "2",
                     "--tokenization", '{"pool": "avg"}', *TINY])
    assert code == 0
    metrics = json.loads((run / "metrics-test.json").read_text())["metrics"]
    assert json.loads(capsys.readouterr().out) == metrics
    assert set(metrics) == {"top1", "top5"}
    for name in ("config.json", "log.jsonl", "checkpoint.safetensors", "checkpoint.json", "trainable.safetensors",
                 "predictions-test.npz"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["tokenization"] == {"pool": "avg"} and config["epochs"] == 2 and config["tiny"] is True

    (run / "metrics-test.json").unlink()
    assert cli.main(["eval", str(run)]) == 0
    assert json.loads((run / "metrics-test.json").read_text())["metrics"] == pytest.approx(metrics)
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)


def test_config_file_with_flag_overrides(lite_root, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'task = "mechanical-drawing"\ndata_root = "{lite_root}"\nepochs = 5\nseed = 7\n'
                      "[adapter]\nkind = \"lora\"\nrank = 2\n")
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--epochs", "1", "--out", str(run), *TINY]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert (resolved["epochs"], resolved["seed"], resolved["adapter"]) == (1, 7, {"kind": "lora", "rank": 2})
    assert "R@1" in json.loads((run / "metrics-test.json").read_text())["metrics"]


def test_invalid_settings_are_reported_with_their_name(lite_root, tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"task": "circuits", "data_root": str(lite_root), "epoch": 3}))
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "unknown setting(s) 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err
    assert cli.main(["train", "--task", "circuits", "--data-root", str(lite_root), "--batch-size", "0"]) == 2
    assert "batch_size must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "circuits", "--tokenization", "[1, 2]"])
    assert "--tokenization: expected a JSON object" in capsys.readouterr().err


def test_settings_that_do_not_fit_the_run_are_reported_without_a_traceback(lite_root, tmp_path, capsys):
    base = ["train", "--task", "circuits", "--data-root", str(lite_root), *TINY]
    assert cli.main(base) == 2
    assert "out: the run directory is required (--out)" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "run"), "--tokenization", '{"sub": 5}']) == 2
    assert "SubKernelPatchEmbed: sub=5 must divide the kernel size q=" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "run"), "--domain-attention", '{"num_maps": 0}']) == 2
    assert "DomainAttention: num_maps must be a positive int, got 0" in capsys.readouterr().err


def test_unreadable_image_fails_with_its_path(lite_root, tmp_path, capsys):
    root = write_toy_lite(tmp_path / "lite", shots=1, eval_shots=1, pairs=2)
    broken = root / "circuits" / "data" / "img_1.png"
    broken.write_bytes(b"not an image")
    code = cli.main(["train", "--task", "circuits", "--data-root", str(root), "--out", str(tmp_path / "run"),
                     "--epochs", "1", "--linear-probe", *TINY])
    assert code == 2  # a bad input, like a bad setting
    assert f"cannot read image {broken}" in capsys.readouterr().err


def test_dry_run_counts_match_the_built_tiny_model(lite_root, tmp_path, capsys):
    out = tmp_path / "never"
    code = cli.main(["train", "--dry-run", "--task", "circuits", "--data-root", str(lite_root), "--out", str(out),
                     "--tokenization", "{}", "--domain-attention", "{}", "--adapter", '{"kind": "adaptformer"}', *TINY])
    assert code == 0 and not out.exists()  # nothing trained, nothing written
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    # 56 px, patch 14: a 4 x 4 grid; width 64, 4 blocks, AdaptFormer bottleneck 2.
    assert rows["tokenization"][1:3] == ["49", "49"]
    assert rows["domain_attention"][1:3] == ["651", "651"]  # 10 maps of 8 x 8, 10 mixing logits, alpha
    assert rows["adapter"][1:3] == ["1,024", "1,024"]  # 4 x (64*2 + 2*64): no biases, as in the release
    assert rows["all"][1:3] == ["1,724", "1,724"]
    assert rows["head"][:3] == ["head", "parameters:", "320;"]  # LayerNorm 2 x 64 + Linear 64 x 3


def test_dry_run_of_vit_h_is_analytic(tmp_path, capsys):
    code = cli.main(["train", "--dry-run", "--analytic-only", "--task", "circuits", "--data-root", str(tmp_path),
                     "--backbone", "ViT-H-14", "--tokenization", "{}", "--domain-attention", "{}"])
    assert code == 0
    output = capsys.readouterr().out
    assert "ViT-H-14 at 224 px: 167.295 GFLOPs" in output
    rows = {line.split()[0]: line.split() for line in output.splitlines()}
    assert rows["tokenization"][1:4] == ["49", "-", "167.295"]  # fused: costs what the patch conv cost
    assert rows["domain_attention"][1] == "10,251"  # 10 maps of 32 x 32, 10 mixing logits, alpha


def test_config_files_and_disabling_a_baseline(tmp_path):
    from lowres_vision.config import ConfigError, load_config

    settings = {"task": "circuits", "data_root": "LITE", "tokenization": {"pool": "avg"}, "lr": 1}
    (tmp_path / "run.json").write_text(json.dumps(settings))
    cfg = load_config(tmp_path / "run.json", {"tokenization": "none", "domain_attention": {}})
    assert cfg.tokenization is None and cfg.domain_attention == {} and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    (tmp_path / "broken.toml").write_text("task = ")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_config(tmp_path / "broken.toml")
    with pytest.raises(ConfigError, match="expected a .json or .toml file"):
        (tmp_path / "run.yaml").write_text("task: circuits")
        load_config(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="missing required setting"):
        load_config(None, {"task": "circuits"})
    with pytest.raises(ConfigError, match="epochs must be int, got '3'"):
        load_config(None, {**settings, "epochs": "3"})
    with pytest.raises(ConfigError, match="linear_probe trains the head alone; it cannot be combined with tokenization"):
        load_config(None, {**settings, "linear_probe": True})
    # linear_probe was a bool: true trained the head, and still does; false is none.
    assert load_config(None, {"task": "circuits", "data_root": "LITE", "linear_probe": True}).linear_probe == "head"
    assert load_config(None, {"task": "circuits", "data_root": "LITE", "linear_probe": False}).linear_probe is None
    assert load_config(None, {"task": "circuits", "data_root": "LITE", "linear_probe": "none"}).linear_probe is None
    with pytest.raises(ConfigError, match=r"linear_probe must be one of \('logreg', 'head'\) or none, got 'svm'"):
        load_config(None, {"task": "circuits", "data_root": "LITE", "linear_probe": "svm"})
    with pytest.raises(ConfigError, match="historic-maps is a retrieval task: use linear_probe='head'"):
        load_config(None, {"task": "historic-maps", "data_root": "LITE", "linear_probe": "logreg"})
    with pytest.raises(ConfigError, match="augment_manifest does not apply"):
        load_config(None, {"task": "circuits", "data_root": "LITE", "linear_probe": "logreg", "augment_manifest": "m.json"})
