"""Training / evaluation loops on a tiny open_clip tower (4 layers, width 64, 56 px) and toy LITE data."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from lowres_vision.config import ConfigError, TrainConfig
from lowres_vision.training import evaluate, train
from lowres_vision.training.run_directory import RunDirectoryError

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(lite_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(task="circuits", data_root=str(lite_root), tiny=True, image_size=56, epochs=2, batch_size=4,
                    lr=1e-2, out=str(out), eval_every=0, select="last", tokenization={"pool": "avg"}, seed=0)
    return TrainConfig(**{**settings, **overrides})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _without_time(records: list[dict]) -> list[dict]:
    """The training records, without their times (the "run" / "resume" records name the run: not compared)."""
    return [{key: value for key, value in record.items() if key != "time"} for record in records
            if record["event"] not in ("run", "resume")]


class Killed(Exception):
    pass


def _kill_at(step: int):
    def hook(global_step: int, model: torch.nn.Module) -> None:
        if global_step == step:
            raise Killed
    return hook


def test_classification_learns_and_writes_the_run_directory(lite_root, tmp_path):
    cfg = _config(lite_root, tmp_path / "run", epochs=3, eval_every=1, domain_attention={})
    metrics = train(cfg)
    run = Path(cfg.out)
    epochs = [record for record in _log(run) if record["event"] == "epoch"]
    assert [record["epoch"] for record in epochs] == [0, 1, 2] and "val/top1" in epochs[0]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    steps = [record for record in _log(run) if record["event"] == "step"]
    assert [record["step"] for record in steps] == list(range(1, 10))  # 12 images / batch 4, 3 epochs

    config = json.loads((run / "config.json").read_text())
    assert config == {"run_id": config["run_id"], **cfg.to_dict()}
    trainable = load_file(str(run / "trainable.safetensors"))
    assert {"visual.conv1.logits", "head.linear.weight", "head.norm.weight"} <= set(trainable)
    assert any(name.endswith("domain_attention.maps") for name in trainable)
    assert not torch.equal(trainable["visual.conv1.logits"], torch.ones(49))  # the sub-kernel weights moved

    predictions = np.load(run / "predictions-test.npz")
    assert predictions["logits"].shape == (6, 3) and list(predictions["class_names"]) == ["class_3", "class_7", "class_10"]
    assert predictions["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    top1 = 100 * np.mean(predictions["logits"].argmax(1) == predictions["labels"])
    assert json.loads((run / "metrics-test.json").read_text()) == {
        "run_id": config["run_id"], "split": "test", "parameters": "trainable.safetensors", "global_step": 9,
        "metrics": metrics}
    assert metrics["top1"] == pytest.approx(top1) and metrics["top5"] == 100.0  # 3 classes: top-5 is everything

    assert evaluate(cfg) == pytest.approx(metrics)  # the frozen backbone is rebuilt from the seed


def test_resume_after_kill_ends_with_identical_parameters(lite_root, tmp_path):
    settings = dict(train_augment=True, checkpoint_every=2, adapter={"kind": "adaptformer"})
    reference = _config(lite_root, tmp_path / "reference", **settings)
    train(reference)

    killed = _config(lite_root, tmp_path / "killed", **settings)
    with pytest.raises(Killed):
        train(killed, on_step=_kill_at(5))  # epoch 2, step 2 of 3; the last checkpoint is step 4
    state = json.loads((tmp_path / "killed" / "checkpoint.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    assert state["sampler"]["start_index"] == 4
    train(_config(lite_root, tmp_path / "killed", resume=True, **settings))

    expected = load_file(str(tmp_path / "reference" / "trainable.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "trainable.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert _without_time(_log(tmp_path / "killed")) == _without_time(_log(tmp_path / "reference"))


def _write_manifest(lite_root: Path, directory: Path) -> Path:
    """A toy augmentation manifest: one label-preserving image per training image, 3 breaking/partner pairs."""
    from lowres_vision.augment.cache import file_sha256

    rng = np.random.default_rng(0)
    entries = []
    for index, source in enumerate(sorted((lite_root / "circuits" / "data").glob("img_*.png"))[:12]):
        pixels = np.asarray(Image.open(source), dtype=np.int16) + rng.integers(-8, 9, (32, 32, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(directory / f"keep{index}.png")
        entries.append({"key": f"keep{index}", "path": f"keep{index}.png", "kind": "preserving",
                        "source_sha256": file_sha256(source)})
    for index in range(3):
        for kind, key in (("breaking", f"break{index}"), ("partner", f"partner{index}")):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(directory / f"{key}.png")
            entries.append({"key": key, "path": f"{key}.png", "kind": kind,
                            **({"partner_of": f"break{index}"} if kind == "partner" else {})})
    manifest = directory / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return manifest


def test_generated_data_training_resumes_exactly(lite_root, tmp_path):
    settings = dict(augment_manifest=str(_write_manifest(lite_root, tmp_path)), replace_prob=0.5,
                    genie_manifest=str(_write_genie_manifest(tmp_path)), bank_size=5,
                    checkpoint_every=2)
    train(_config(lite_root, tmp_path / "reference", **settings))
    with pytest.raises(Killed):
        train(_config(lite_root, tmp_path / "killed", **settings), on_step=_kill_at(5))
    train(_config(lite_root, tmp_path / "killed", resume=True, **settings))
    expected = load_file(str(tmp_path / "reference" / "trainable.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "trainable.safetensors"))
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert _without_time(_log(tmp_path / "killed")) == _without_time(_log(tmp_path / "reference"))
    without = _config(lite_root, tmp_path / "plain", checkpoint_every=2)
    train(without)
    plain = load_file(str(tmp_path / "plain" / "trainable.safetensors"))
    assert not torch.equal(plain["head.linear.weight"], expected["head.linear.weight"])  # the generated data took part


GENIE_LABELS = [0, 1, 2, 0, 1]


def _write_genie_manifest(directory: Path) -> Path:
    """A toy GeNIe manifest: five hard negatives labelled with their target classes (class_3, class_7, class_10)."""
    rng = np.random.default_rng(1)
    names = ["class_3", "class_7", "class_10"]
    entries = []
    for index, label in enumerate(GENIE_LABELS):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(directory / f"genie{index}.png")
        entries.append({"key": f"genie{index}", "path": f"genie{index}.png", "kind": "genie", "label": label,
                        "label_name": names[label]})
    manifest = directory / "genie.jsonl"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return manifest


def _record_training_items(monkeypatch) -> list[tuple[int, tuple]]:
    """Every (index, item) the training set hands out, in order."""
    from lowres_vision.augment.hard_negatives import WithHardNegatives

    seen, getitem = [], WithHardNegatives.__getitem__

    def recording(self, index):
        item = getitem(self, index)
        seen.append((index, item))
        return item

    monkeypatch.setattr(WithHardNegatives, "__getitem__", recording)
    return seen


def test_genie_hard_negatives_join_the_training_set_and_are_counted(lite_root, tmp_path, monkeypatch):
    seen = _record_training_items(monkeypatch)
    cfg = _config(lite_root, tmp_path / "run", genie_manifest=str(_write_genie_manifest(tmp_path)))
    train(cfg)
    # 12 training images + 5 hard negatives, each drawn once per epoch: 17 items, ceil(17 / 4) = 5 steps.
    assert len(seen) == 2 * 17
    for epoch in range(2):
        items = seen[17 * epoch:17 * (epoch + 1)]
        assert sorted(index for index, _ in items) == list(range(17))
        genie = sorted((index, item[1]) for index, item in items if index >= 12)
        assert genie == [(12 + negative, label) for negative, label in enumerate(GENIE_LABELS)]  # the target labels
    epochs = [record for record in _log(tmp_path / "run") if record["event"] == "epoch"]
    counts = {"original": 12, "preserving": 0, "genie": 5, "breaking_pairs": 0}
    assert [record["samples"] for record in epochs] == [counts] * 2
    assert [record["step"] for record in epochs] == [5, 10]


def test_every_kind_of_generated_sample_is_counted_as_seen(lite_root, tmp_path, monkeypatch):
    seen = _record_training_items(monkeypatch)
    cfg = _config(lite_root, tmp_path / "run", augment_manifest=str(_write_manifest(lite_root, tmp_path)),
                  replace_prob=0.5, bank_size=4, genie_manifest=str(_write_genie_manifest(tmp_path)))
    train(cfg)
    epochs = [record for record in _log(tmp_path / "run") if record["event"] == "epoch"]
    for epoch, record in enumerate(epochs):
        items = seen[17 * epoch:17 * (epoch + 1)]
        weights = [round(float(item[2]), 6) for index, item in items if index < 12]
        expected = {"original": weights.count(1.0), "preserving": weights.count(0.65),
                    "genie": sum(index >= 12 for index, _ in items),
                    "breaking_pairs": 5 * 3}  # 5 steps, each with a batch of the 3 (label-breaking, partner) pairs
        assert record["samples"] == expected
        assert expected["genie"] == 5 and expected["original"] + expected["preserving"] == 12
    assert sum(record["samples"]["preserving"] for record in epochs) > 0
    assert all(float(item[2]) == 1.0 for index, item in seen if index >= 12)  # a hard negative counts fully


def test_genie_manifest_errors_name_the_setting(lite_root, tmp_path):
    from lowres_vision.config import ConfigError
    from lowres_vision.data import DatasetFormatError

    manifest = _write_genie_manifest(tmp_path)
    with pytest.raises(ConfigError, match="genie_manifest.*retrieval"):
        _config(lite_root, tmp_path / "run", task="historic-maps", genie_manifest=str(manifest)).validate()
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    entries[1]["label_name"] = "class_10"
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    with pytest.raises(DatasetFormatError, match="labelled 'class_10' but class 1 of this task is 'class_7'"):
        train(_config(lite_root, tmp_path / "run", genie_manifest=str(tmp_path / "other.jsonl")))
    (tmp_path / "none.jsonl").write_text("")
    with pytest.raises(DatasetFormatError, match="no GeNIe images"):
        train(_config(lite_root, tmp_path / "run", genie_manifest=str(tmp_path / "none.jsonl")))


def test_resume_refuses_a_different_batch_size(lite_root, tmp_path):
    with pytest.raises(Killed):
        train(_config(lite_root, tmp_path, checkpoint_every=1), on_step=_kill_at(1))
    with pytest.raises(ConfigError, match="settings differ from .*config.json: batch_size 4 -> 2"):
        train(_config(lite_root, tmp_path, batch_size=2, resume=True))


def test_same_seed_gives_the_same_parameters(lite_root, tmp_path):
    runs = {name: _config(lite_root, tmp_path / name, epochs=1, seed=seed, train_augment=True)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    for cfg in runs.values():
        train(cfg)
    a, b, c = (load_file(str(Path(cfg.out) / "trainable.safetensors")) for cfg in runs.values())
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["head.linear.weight"], c["head.linear.weight"])


def test_retrieval_training_and_metrics(lite_root, tmp_path):
    maps = _config(lite_root, tmp_path / "maps", task="historic-maps", epochs=1, tokenization=None, adapter={"kind": "lora", "rank": 2})
    metrics = train(maps)
    predictions = np.load(Path(maps.out) / "predictions-test.npz")
    queries, gallery = predictions["query_embeddings"], predictions["gallery_embeddings"]
    assert queries.shape == (6, 64) and gallery.shape == (3, 64)  # gallery: the unique satellite images
    assert predictions["ground_truth"].tolist() == [0, 0, 1, 1, 2, 2]
    assert predictions["gallery_paths"][0].endswith("test_sat_0.png")
    scores = queries @ gallery.T
    ranks = 1 + (scores > scores[np.arange(6), predictions["ground_truth"]][:, None]).sum(1)
    assert metrics["R@1"] == pytest.approx(100 * np.mean(ranks == 1))
    assert metrics["mean_rank"] == pytest.approx(ranks.mean())

    drawings = _config(lite_root, tmp_path / "drawings", task="mechanical-drawing", epochs=1, tokenization=None, linear_probe="head")
    metrics = train(drawings)
    for name in ("R@1", "R@5", "mean_rank"):
        assert metrics[name] == pytest.approx((metrics[f"query_to_gallery/{name}"] + metrics[f"gallery_to_query/{name}"]) / 2)
    predictions = np.load(Path(drawings.out) / "predictions-test.npz")
    scores = predictions["gallery_embeddings"] @ predictions["query_embeddings"].T  # render -> drawing, paired by row
    backward = 1 + (scores > np.diag(scores)[:, None]).sum(1)
    assert metrics["gallery_to_query/mean_rank"] == pytest.approx(backward.mean())
    assert set(load_file(str(Path(drawings.out) / "trainable.safetensors"))) == {
        "head.norm.weight", "head.norm.bias", "head.projection.weight"}


def test_logistic_regression_fit_is_sklearns_with_the_releases_settings(monkeypatch):
    import sklearn.linear_model
    from sklearn.linear_model import LogisticRegression

    from lowres_vision.training.linear_probe import fit_logistic_regression

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 3, 3, 3])  # class 2 has no training image
    features = torch.randn(9, 5, generator=generator) + 2 * torch.nn.functional.one_hot(labels, 5)
    test = torch.randn(20, 5, generator=generator)
    passed = {}

    class Recording(LogisticRegression):
        def __init__(self, **options):
            passed.update(options)
            super().__init__(**options)

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", Recording)
    weight, bias, _ = fit_logistic_regression(features, labels, 4)
    assert passed == {"C": 0.316, "max_iter": 1000, "random_state": 0}
    reference = LogisticRegression(C=0.316, max_iter=1000, random_state=0).fit(features.double().numpy(), labels.numpy())
    scores = test.double() @ weight.T + bias
    torch.testing.assert_close(scores[:, [0, 1, 3]], torch.from_numpy(reference.decision_function(test.double().numpy())))
    assert scores.argmax(1).tolist() == reference.predict(test.double().numpy()).tolist()
    assert bias[2] == float("-inf") and not weight[2].any()
    # C reaches the solver: a weaker penalty gives larger coefficients.
    assert weight.abs().sum() < fit_logistic_regression(features, labels, 4, C=100.0)[0].abs().sum()

    binary = labels.clamp(max=1)  # two classes: sklearn fits one score; softmax of the two rows is predict_proba
    weight, bias, _ = fit_logistic_regression(features, binary, 2)
    reference = LogisticRegression(C=0.316, max_iter=1000, random_state=0).fit(features.double().numpy(), binary.numpy())
    torch.testing.assert_close(torch.softmax(test.double() @ weight.T + bias, 1),
                               torch.from_numpy(reference.predict_proba(test.double().numpy())))


def test_logistic_regression_probe_run_predicts_as_sklearn_on_the_frozen_class_tokens(lite_root, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from lowres_vision.data import ClassificationDataset, load_split
    from lowres_vision.training.inputs import transforms
    from lowres_vision.training.model import build_model

    cfg = _config(lite_root, tmp_path / "probe", tokenization=None, linear_probe="logreg")
    metrics = train(cfg)
    run = Path(cfg.out)
    assert set(load_file(str(run / "trainable.safetensors"))) == {"head.linear.weight", "head.linear.bias"}
    assert [record["event"] for record in _log(run)] == ["run", "fit"]  # fitted once, no optimizer steps or epochs
    assert _log(run)[1]["train_samples"] == 12

    # The features written out independently: the frozen tower's last-block class token, layer-normed.
    model, preprocess = build_model(cfg, 3)
    _, eval_tf = transforms(preprocess, augment=False)

    def features(split_name):
        split = load_split("circuits", str(lite_root), split_name)
        images = torch.stack([ClassificationDataset(split, eval_tf)[i][0] for i in range(len(split.labels))])
        with torch.no_grad():
            tokens = model.eval().forward_tokens(images)[:, 0]
        return torch.nn.functional.layer_norm(tokens, (64,)).double().numpy(), np.array(split.labels)

    reference = LogisticRegression(C=0.316, max_iter=1000, random_state=0).fit(*features("train"))
    test_features, test_labels = features("test")
    logits = np.load(run / "predictions-test.npz")["logits"]
    np.testing.assert_allclose(logits, reference.decision_function(test_features), rtol=1e-4, atol=1e-4)
    assert logits.argmax(1).tolist() == reference.predict(test_features).tolist()
    assert metrics["top1"] == pytest.approx(100 * np.mean(reference.predict(test_features) == test_labels))
    assert evaluate(cfg) == metrics


def _spoil_the_head_at(step: int, kill_at: int | None = None):
    """A step hook: zeroes the classification head after optimizer step `step` (every class then scores 0,
    so the last epoch validates no better than any other), and records the parameters after each step."""
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def hook(global_step: int, model: torch.nn.Module) -> None:
        if global_step == step:
            with torch.no_grad():
                model.head.linear.weight.zero_()
        seen[global_step] = {name: tensor.clone() for name, tensor in model.trainable_state_dict().items()}
        if global_step == kill_at:
            raise Killed
    return hook, seen


def test_best_epoch_on_validation_gives_the_test_metrics(lite_root, tmp_path):
    cfg = _config(lite_root, tmp_path / "run", epochs=3, eval_every=1, select="best")
    hook, seen = _spoil_the_head_at(9)  # 3 steps per epoch: the last epoch's last step
    metrics = train(cfg, on_step=hook)
    run = Path(cfg.out)
    epochs = [record for record in _log(run) if record["event"] == "epoch"]
    top1 = [record["val/top1"] for record in epochs]
    best = top1.index(max(top1))  # the first of the best: a later epoch must be strictly better
    assert best < 2 and top1[2] == pytest.approx(100 / 3)  # the spoiled head predicts one class
    results = json.loads((run / "metrics-test.json").read_text())
    assert results["metrics"] == metrics and (results["parameters"], results["global_step"]) == ("best.safetensors", 3 * (best + 1))
    assert results["selection"] == {"epoch": best, "criterion": "val/top1", "value": top1[best]}
    # best.safetensors holds the parameters at the end of the best epoch; trainable.safetensors the last ones.
    selected, last = load_file(str(run / "best.safetensors")), load_file(str(run / "trainable.safetensors"))
    assert all(torch.equal(selected[name], seen[3 * (best + 1)][name]) for name in seen[9])
    assert all(torch.equal(last[name], seen[9][name]) for name in seen[9])
    # The test metrics are the best epoch's: re-evaluating best.safetensors gives them, the last parameters do not.
    assert evaluate(cfg) == pytest.approx(metrics)
    assert evaluate(_config(lite_root, run, epochs=3, select="last"))["top1"] == pytest.approx(100 / 3) != metrics["top1"]


def test_best_epoch_survives_a_resume(lite_root, tmp_path):
    settings = dict(epochs=3, eval_every=1, select="best", checkpoint_every=1)
    reference = _config(lite_root, tmp_path / "reference", **settings)
    train(reference, on_step=_spoil_the_head_at(9)[0])
    killed = _config(lite_root, tmp_path / "killed", **settings)
    with pytest.raises(Killed):
        train(killed, on_step=_spoil_the_head_at(9, kill_at=8)[0])  # after epochs 0 and 1 were validated
    train(_config(lite_root, tmp_path / "killed", resume=True, **settings), on_step=_spoil_the_head_at(9)[0])
    results = [json.loads((tmp_path / run / "metrics-test.json").read_text()) for run in ("reference", "killed")]
    assert [{key: value for key, value in result.items() if key != "run_id"} for result in results] == [
        {key: value for key, value in results[0].items() if key != "run_id"}] * 2
    assert results[0]["selection"]["epoch"] < 2
    expected, resumed = (load_file(str(tmp_path / run / "best.safetensors")) for run in ("reference", "killed"))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_retrieval_selects_the_lowest_release_validation_loss(lite_root, tmp_path):
    cfg = _config(lite_root, tmp_path / "maps", task="historic-maps", epochs=3, eval_every=1, select="best",
                  tokenization=None, adapter={"kind": "lora", "rank": 2})
    train(cfg)
    losses = [record["val/loss"] for record in _log(Path(cfg.out)) if record["event"] == "epoch"]
    selection = json.loads((Path(cfg.out) / "metrics-test.json").read_text())["selection"]
    assert selection == {"epoch": losses.index(min(losses)), "criterion": "val/loss", "value": min(losses)}
    train(_config(lite_root, tmp_path / "recall", task="historic-maps", epochs=3, eval_every=1, select="best",
                  select_by="R@1", tokenization=None, adapter={"kind": "lora", "rank": 2}))
    recalls = [record["val/R@1"] for record in _log(tmp_path / "recall") if record["event"] == "epoch"]
    selection = json.loads((tmp_path / "recall" / "metrics-test.json").read_text())["selection"]
    assert (selection["epoch"], selection["criterion"]) == (recalls.index(max(recalls)), "val/R@1")


def test_selection_settings_are_checked(lite_root, tmp_path):
    from lowres_vision.config import ConfigError

    with pytest.raises(ConfigError, match="select must be one of"):
        _config(lite_root, tmp_path, select="first").validate()
    with pytest.raises(ConfigError, match=r"select_by for task 'circuits' must be one of \('top1',\)"):
        _config(lite_root, tmp_path, select="best", eval_every=1, select_by="R@1").validate()
    with pytest.raises(ConfigError, match="eval_every=0 never validates"):
        _config(lite_root, tmp_path, select="best").validate()
    root = tmp_path / "paired"
    root.mkdir()
    for name in ("q.png", "g.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("q.png,g.png\n")
    with pytest.raises(ConfigError, match="has no val split"):
        train(_config(root, tmp_path / "run", task="paired-csv", select="best", eval_every=1, tokenization=None,
                      adapter={"kind": "lora", "rank": 2}))


def test_release_validation_loss_by_hand():
    from lowres_vision.data import RetrievalSplit
    from lowres_vision.training.evaluation import pair_loss

    # Three drawing/render pairs (one query per gallery image) in batches of 2: pairs 0-1, then pair 2 alone.
    split = RetrievalSplit(tuple(Path(f"q{i}") for i in range(3)), tuple(Path(f"g{i}") for i in range(3)), (2, 0, 1), symmetric=True)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery = torch.tensor([[0.6, 0.8], [1.0, 1.0], [1.0, 0.0]])  # gallery g matches query 1, 2, 0
    # Batch 1 pairs gallery 0 with query 1 and gallery 1 with query 2: unit vectors q = (0, 1), (c, c); g = (.6, .8), (c, c).
    c = 1 / math.sqrt(2)
    logits = [[0.8, c], [c * 1.4, 1.0]]  # raw cosines: the release's validation loss has logit scale 1
    rows = sum(math.log(math.exp(row[0]) + math.exp(row[1])) - row[i] for i, row in enumerate(logits))
    columns = sum(math.log(math.exp(logits[0][i]) + math.exp(logits[1][i])) - logits[i][i] for i in range(2))
    first = 0.5 * (rows / 2 + columns / 2)
    assert pair_loss(split, queries, gallery, batch_size=2, seed=0) == pytest.approx((2 * first + 1 * 0.0) / 3, rel=1e-6)


def _write_shared_satellite_maps(root: Path, maps_per_satellite: list[int]) -> dict[int, int]:
    """A historic-maps train split whose satellite k has maps_per_satellite[k] old maps; every image is
    a solid grey whose value names it. Returns {map value: its satellite's value}."""
    directory = root / "historic-maps"
    (directory / "Satellite").mkdir(parents=True)
    rows, satellite_of, value = [], {}, 1
    for maps in maps_per_satellite:
        satellite, value = value, value + 1
        Image.new("RGB", (8, 8), (satellite,) * 3).save(directory / "Satellite" / f"sat{satellite}.png")
        for _ in range(maps):
            Image.new("RGB", (8, 8), (value,) * 3).save(directory / "Satellite" / f"map{value}.png")
            rows.append(f"sat{satellite}.png,map{value}.png")
            satellite_of[value], value = satellite, value + 1
    (directory / "train.csv").write_text("".join(f"{row}\n" for row in rows))
    return satellite_of


def test_paired_training_batches_hold_each_gallery_image_once(tmp_path):
    from torch.utils.data import DataLoader

    from lowres_vision.data import EpochSeededDataset
    from lowres_vision.training.distributed import ResumableDistributedSampler
    from lowres_vision.training.inputs import train_dataset

    satellite_of = _write_shared_satellite_maps(tmp_path, [3, 1, 2, 2, 1, 3])
    cfg = TrainConfig(task="historic-maps", data_root=str(tmp_path), seed=5)

    def value(image):
        return torch.tensor(np.asarray(image)[0, 0, 0], dtype=torch.int64)

    def epoch_batches(epoch: int, start_index: int = 0) -> list[tuple[list[int], list[int]]]:
        dataset = EpochSeededDataset(train_dataset(cfg, value), cfg.seed)
        sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, seed=cfg.seed)
        sampler.set_position(epoch, start_index)
        dataset.set_epoch(epoch)
        return [(queries.tolist(), gallery.tolist()) for queries, gallery in DataLoader(dataset, batch_size=4, sampler=sampler)]

    satellites = sorted(set(satellite_of.values()))
    drawn: dict[int, set[int]] = {satellite: set() for satellite in satellites}
    for epoch in range(12):
        batches = epoch_batches(epoch)
        assert [len(gallery) for _, gallery in batches] == [4, 2]  # 6 satellites per epoch, not 12 maps
        assert sorted(sum((gallery for _, gallery in batches), [])) == satellites  # each satellite once
        for queries, gallery in batches:
            assert len(set(gallery)) == len(gallery)  # no satellite is its own negative
            assert [satellite_of[query] for query in queries] == gallery  # each query is a map of its satellite
            for query, satellite in zip(queries, gallery):
                drawn[satellite].add(query)
    # Over the epochs every map of a shared satellite is drawn.
    assert {satellite: len(maps) for satellite, maps in drawn.items()} == {1: 3, 5: 1, 7: 2, 10: 2, 13: 1, 15: 3}
    # The draws are a function of (seed, epoch, index): a resumed epoch continues with the same pairs.
    assert epoch_batches(3, start_index=4) == epoch_batches(3)[1:]


def test_nothing_to_train_and_missing_run_are_clear_errors(lite_root, tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        train(_config(lite_root, tmp_path / "frozen", task="historic-maps", tokenization=None))
    with pytest.raises(RunDirectoryError, match="never holds no run"):
        evaluate(_config(lite_root, tmp_path / "never"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cfg: TrainConfig, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    final = {}

    def keep(step: int, model: torch.nn.Module) -> None:
        final.update({name: parameter.detach().clone() for name, parameter in model.trainable_parameters()})

    try:
        train(cfg, on_step=keep)
        torch.save(final, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(lite_root, tmp_path):
    single = _config(lite_root, tmp_path / "single", epochs=1, batch_size=4, train_augment=True)
    train(single)
    ddp = _config(lite_root, tmp_path / "ddp", epochs=1, batch_size=2, train_augment=True)
    # fork: the workers inherit the imported torch/open_clip instead of importing them again (~30 s on CI).
    mp.start_processes(_ddp_worker, args=(2, _free_port(), ddp, str(tmp_path)), nprocs=2, join=True, start_method="fork")

    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    expected = load_file(str(tmp_path / "single" / "trainable.safetensors"))
    assert load_file(str(tmp_path / "ddp" / "trainable.safetensors")).keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(rank0[name], expected[name], atol=1e-5, rtol=1e-4)
    assert [record["step"] for record in _log(tmp_path / "ddp")] == [0, 1, 2, 3, 3]  # rank 0 alone wrote it
    # Each step's loss is averaged and its samples summed over both ranks (one all_reduce per step).
    (single_epoch,), (ddp_epoch,) = ([r for r in _log(tmp_path / run) if r["event"] == "epoch"] for run in ("single", "ddp"))
    assert ddp_epoch["samples"] == single_epoch["samples"] and sum(ddp_epoch["samples"].values()) > 0
    assert ddp_epoch["loss"] == pytest.approx(single_epoch["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- the paper's augmentation baselines


def _mixed_batch(mixup: float, cutmix: float, step: int = 3):
    from lowres_vision.training.inputs import BatchMixing

    cfg = TrainConfig(task="circuits", data_root="LITE", mixup=mixup, cutmix=cutmix, seed=5)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 0.65, 1.0, 0.65])
    mixed, targets, mixed_weights = BatchMixing.from_config(cfg, 3)((images, labels, weights), step, 0)
    return images, labels, weights, mixed, targets, mixed_weights


def test_mixup_mixes_each_image_with_the_previous_one_as_its_soft_target_says():
    images, labels, weights, mixed, targets, mixed_weights = _mixed_batch(mixup=0.4, cutmix=0.0)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    lam = targets[0, labels[0]]  # image 0 (class 0) is mixed with image 3 (class 1)
    assert 0 < lam < 1 and torch.equal(mixed_weights, weights)
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    again = _mixed_batch(mixup=0.4, cutmix=0.0)
    assert torch.equal(again[3], mixed)  # seeded by (seed, step, rank)
    assert not torch.equal(_mixed_batch(mixup=0.4, cutmix=0.0, step=4)[4], targets)


def test_cutmix_pastes_one_box_of_the_previous_image_and_its_area_sets_the_target():
    images, labels, _, mixed, targets, _ = _mixed_batch(mixup=0.0, cutmix=1.0)
    from_previous = (mixed == images.roll(1, 0)) & (mixed != images)
    pasted = from_previous[0, 0]
    assert torch.equal(from_previous, pasted.expand_as(from_previous))  # the same box in every image and channel
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    box = torch.zeros_like(pasted)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert torch.equal(pasted, box) and 0 < pasted.sum() < 64
    assert torch.equal(mixed[:, :, ~pasted], images[:, :, ~pasted])
    lam = 1 - pasted.sum().item() / 64
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))


def test_step_loss_with_soft_targets_is_the_weighted_cross_entropy_by_hand():
    from lowres_vision.training.loop import step_loss

    _, _, weights, mixed, targets, _ = _mixed_batch(mixup=0.4, cutmix=0.0)
    linear = torch.nn.Linear(3 * 8 * 8, 3)

    class Forward(torch.nn.Module):
        def forward(self, images, num_task):
            return linear(images.flatten(1)), images.new_zeros(0, 1)

    cfg = TrainConfig(task="circuits", data_root="LITE", mixup=0.4, amp=False)
    loss = step_loss(Forward(), (mixed, targets, weights), None, None, cfg, torch.device("cpu"))
    logits = linear(mixed.flatten(1))
    per_image = [-sum(targets[i, k] * torch.log(torch.exp(logits[i, k]) / torch.exp(logits[i]).sum()) for k in range(3))
                 for i in range(4)]
    expected = sum(w * ce for w, ce in zip(weights, per_image)) / weights.sum()
    torch.testing.assert_close(loss, expected)


def test_random_erasing_sets_one_rectangle_of_the_normalised_image_to_zero():
    from lowres_vision.data import EpochSeededDataset, train_transform

    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (40, 40, 3), dtype=np.uint8))
    plain = train_transform(32)(image)
    erased = EpochSeededDataset(_Transformed(image, train_transform(32, random_erasing=1.0)), seed=0)[0]
    changed = (erased != plain).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    box = torch.zeros_like(changed)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert torch.equal(changed, box) and (erased[:, box] == 0).all()
    assert 0.02 * 32 * 32 * 0.5 <= box.sum() <= 0.33 * 32 * 32  # torchvision's 2-33% of the area (rounded sides)
    assert torch.equal(EpochSeededDataset(_Transformed(image, train_transform(32, random_erasing=1.0)), seed=0)[0], erased)
    assert torch.equal(train_transform(32, random_erasing=0.0)(image), plain)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, image, transform):
        self.image, self.transform = image, transform

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.transform(self.image)


def test_augmentation_baselines_train_and_reject_retrieval(lite_root, tmp_path):
    from lowres_vision.config import ConfigError

    cfg = _config(lite_root, tmp_path / "mixed", epochs=1, tokenization=None, linear_probe="head",
                  mixup=0.4, cutmix=1.0, random_erasing=0.5)
    train(cfg)
    losses = [record["loss"] for record in _log(Path(cfg.out)) if record["event"] == "step"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    with pytest.raises(ConfigError, match="mixup mixes class labels; task 'historic-maps' is a retrieval task"):
        _config(lite_root, tmp_path / "x", task="historic-maps", mixup=0.2).validate()
    with pytest.raises(ConfigError, match=r"random_erasing must be in \[0, 1\], got 1.5"):
        _config(lite_root, tmp_path / "x", random_erasing=1.5).validate()
