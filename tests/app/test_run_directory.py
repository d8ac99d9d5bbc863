"""A run directory belongs to one run: refused overwrites, run ids on every file, strict resume, torn
logs, writes killed at every point, settings refused before training, non-finite losses, per-split results."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_training import Killed, _config, _kill_at, _log, _without_time

from lowres_vision import cli, plots
from lowres_vision.config import ConfigError
from lowres_vision.errors import InputError
from lowres_vision.training import evaluate, loop, train
from lowres_vision.atomic_files import write_atomic
from lowres_vision.training.run_directory import RunDirectoryError

pytestmark = pytest.mark.usefixtures("single_thread")


def _state(run: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime in ns) of every file of `run`: what must not change."""
    return {path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(run.iterdir()) if path.is_file()}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _killed_run(lite_root: Path, run: Path, **settings) -> None:
    """A 2-epoch run (3 steps an epoch) killed after step 5; its last checkpoint is step 4."""
    with pytest.raises(Killed):
        train(_config(lite_root, run, checkpoint_every=2, **settings), on_step=_kill_at(5))


@pytest.fixture(scope="module")
def reference(lite_root, tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch run that every resumed run must end exactly like."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(_config(lite_root, run, checkpoint_every=2))
    return run


def _assert_same_parameters(run: Path, expected: Path) -> None:
    resumed, wanted = (load_file(str(path / "trainable.safetensors")) for path in (run, expected))
    assert resumed.keys() == wanted.keys()
    for name in wanted:
        assert torch.equal(resumed[name], wanted[name]), name


def test_every_file_of_a_run_carries_its_id(reference):
    run_id = json.loads((reference / "config.json").read_text())["run_id"]
    assert len(run_id) == len("20250101-120000-1a2b3c4d")
    assert _log(reference)[0] == {**_log(reference)[0], "event": "run", "run_id": run_id, "step": 0}
    assert json.loads((reference / "checkpoint.json").read_text())["run_id"] == run_id
    assert json.loads(_metadata(reference / "checkpoint.safetensors")["state"])["run_id"] == run_id
    assert _metadata(reference / "trainable.safetensors") == {"run_id": run_id, "global_step": "6"}
    metrics = json.loads((reference / "metrics-test.json").read_text())
    assert {key: metrics[key] for key in ("run_id", "split", "global_step")} == {"run_id": run_id, "split": "test",
                                                                                  "global_step": 6}
    predictions = np.load(reference / "predictions-test.npz")
    assert (str(predictions["run_id"]), str(predictions["split"])) == (run_id, "test")


def test_a_new_run_refuses_a_directory_that_holds_a_run(lite_root, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _state(run)
    with pytest.raises(RunDirectoryError, match=f"out: {run} already holds a run .*--resume .*--overwrite"):
        train(_config(lite_root, run, lr=0.1))
    argv = ["train", "--task", "circuits", "--data-root", str(lite_root), "--out", str(run), "--tiny",
            "--image-size", "56", "--linear-probe", "--epochs", "1"]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"lowres-vision train: error: out: {run} already holds a run (")
    assert _state(run) == before


def test_overwrite_clears_the_old_run_before_the_new_one_writes(lite_root, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    evaluate(_config(lite_root, run, checkpoint_every=2, eval_split="val"))  # the old run also has val results
    (run / "plots").mkdir()
    (run / "plots" / "training_curves.png").write_bytes(b"old")
    (run / "notes.txt").write_text("not a run file")
    (run / "backbone.safetensors").write_bytes(b"the user's own weights")
    old_id = json.loads((run / "config.json").read_text())["run_id"]
    # The new run dies at its first step: none of the old run's results may sit beside its files.
    with pytest.raises(Killed):
        train(_config(lite_root, run, overwrite=True, lr=0.1, epochs=1), on_step=_kill_at(1))
    assert sorted(path.name for path in run.iterdir()) == ["backbone.safetensors", "config.json", "log.jsonl", "notes.txt"]
    new_id = json.loads((run / "config.json").read_text())["run_id"]
    assert new_id != old_id and [record["event"] for record in _log(run)] == ["run", "step"]
    assert _log(run)[0]["run_id"] == new_id


def test_files_of_two_runs_are_refused_together(lite_root, reference, tmp_path):
    other = tmp_path / "other"
    train(_config(lite_root, other, epochs=1, checkpoint_every=2))
    mixed = tmp_path / "mixed"
    shutil.copytree(reference, mixed)
    shutil.copy(other / "trainable.safetensors", mixed / "trainable.safetensors")
    ids = [json.loads((path / "config.json").read_text())["run_id"] for path in (other, reference)]
    with pytest.raises(RunDirectoryError, match=f"trainable.safetensors belongs to run '{ids[0]}', .* to run '{ids[1]}'"):
        evaluate(_config(lite_root, mixed, checkpoint_every=2))
    shutil.copy(other / "predictions-test.npz", mixed / "predictions-test.npz")
    with pytest.raises(RunDirectoryError, match=f"{mixed}: predictions-test.npz \\('{ids[0]}'\\), trainable.safetensors "
                                                f"\\('{ids[0]}'\\) do not belong to run '{ids[1]}' of config.json"):
        plots.plot_run(mixed)
    assert not (mixed / "plots").exists()
    shutil.copy(other / "trainable.safetensors", reference / "backbone.safetensors")  # not a file of the run
    plots.plot_run(reference, tmp_path / "figures")  # one run's files: drawn
    (reference / "backbone.safetensors").unlink()

    _killed_run(lite_root, tmp_path / "killed")
    shutil.copy(other / "checkpoint.safetensors", tmp_path / "killed" / "checkpoint.safetensors")
    before = _state(tmp_path / "killed")
    with pytest.raises(RunDirectoryError, match="checkpoint.safetensors belongs to run .*files of two runs"):
        train(_config(lite_root, tmp_path / "killed", checkpoint_every=2, resume=True))
    assert _state(tmp_path / "killed") == before


def test_resume_refuses_changed_settings_and_changes_no_file(lite_root, tmp_path, capsys):
    run = tmp_path / "run"
    _killed_run(lite_root, run)
    before = _state(run)
    with pytest.raises(ConfigError, match=r"settings differ from .*config.json: tokenization \{'pool': 'avg'\} -> "
                                          r"\{'pool': 'max'\}; lr 0.01 -> 0.1; seed 0 -> 1; a run continues"):
        train(_config(lite_root, run, checkpoint_every=2, resume=True, lr=0.1, seed=1, tokenization={"pool": "max"}))
    with pytest.raises(ConfigError, match=r"resume: epochs=1, but the checkpoint in .* is past it \(epoch 2, step 1 of it\)"):
        train(_config(lite_root, run, checkpoint_every=2, resume=True, epochs=1))
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume", "--adapter", '{"kind": "lora"}']) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("adapter None -> {'kind': 'lora'}; a run continues with its own settings "
                         "(start a new run to change them)")
    assert _state(run) == before


def test_resume_may_change_how_long_and_how_often_and_records_it(lite_root, tmp_path):
    three_epochs = _config(lite_root, tmp_path / "reference", epochs=3, checkpoint_every=2)
    train(three_epochs)
    run = tmp_path / "run"
    _killed_run(lite_root, run)
    # The CLI resumes from the stored settings: only the flags given are compared.
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "3", "--log-every", "2",
                     "--eval-batch-size", "5"]) == 0
    _assert_same_parameters(run, tmp_path / "reference")
    resume = next(record for record in _log(run) if record["event"] == "resume")
    assert resume["step"] == 4 and resume["changed"] == {"epochs": [2, 3], "log_every": [1, 2], "eval_batch_size": [64, 5]}
    assert resume["run_id"] == json.loads((run / "config.json").read_text())["run_id"] == _log(run)[0]["run_id"]
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    steps = [record["step"] for record in _log(run) if record["event"] == "step"]
    assert steps == [1, 2, 3, 4, 6, 8]  # every step until the checkpoint, then every second one


def test_a_torn_last_log_line_is_dropped_on_resume(lite_root, reference, tmp_path):
    run = tmp_path / "run"
    _killed_run(lite_root, run)
    with open(run / "log.jsonl", "a") as handle:
        handle.write('{"event": "step", "epoch": 1, "st')  # the write that the kill cut short
    train(_config(lite_root, run, checkpoint_every=2, resume=True))
    _assert_same_parameters(run, reference)
    assert _without_time(_log(run)) == _without_time(_log(reference))


def test_a_bad_log_line_before_the_last_is_refused(lite_root, tmp_path):
    run = tmp_path / "run"
    _killed_run(lite_root, run)
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join([lines[0], "{torn", *lines[1:]]) + "\n")
    before = _state(run)
    with pytest.raises(RunDirectoryError, match="log.jsonl, line 2: not a log record"):
        train(_config(lite_root, run, checkpoint_every=2, resume=True))
    assert _state(run) == before


def test_a_resume_killed_at_any_write_resumes_again_exactly(lite_root, reference, tmp_path, monkeypatch):
    """Every atomic write of a resumed run (log, config, checkpoints, parameters, results) fails in turn,
    as a kill or a full disk would; resuming once more still ends with the reference's parameters."""
    killed = tmp_path / "killed"
    _killed_run(lite_root, killed)
    real_replace, writes = os.replace, 0
    failing = 1
    while True:
        run = tmp_path / f"fail{failing}"
        shutil.copytree(killed, run)
        calls = 0

        def replace(source, target, *, at=failing):
            nonlocal calls
            calls += 1
            if calls == at:
                raise OSError(errno.ENOSPC, "No space left on device", str(target))
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        try:
            train(_config(lite_root, run, checkpoint_every=2, resume=True))
        except OSError as error:
            assert error.errno == errno.ENOSPC
        else:
            break  # fewer writes than `failing`: all were tried
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        assert not list(run.glob(".*.tmp"))  # no half-written copy left behind
        train(_config(lite_root, run, checkpoint_every=2, resume=True))
        _assert_same_parameters(run, reference)
        assert _without_time(_log(run)) == _without_time(_log(reference))
        writes, failing = calls, failing + 1
    assert writes >= 7  # log, config, 2 x checkpoint (step 6), parameters, predictions, metrics


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "metrics-test.json"
    path.write_text("old")

    def full_disk(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, full_disk)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics-test.json"]


def _lite_with(tmp_path: Path, lite_root: Path, split: str, content: str) -> Path:
    root = tmp_path / "lite"
    shutil.copytree(lite_root / "circuits", root / "circuits")
    (root / "circuits" / f"{split}_5_shots.csv").write_text(content)
    return root


@pytest.mark.parametrize("split, content", [("train", "id,filename,label\n"), ("val", ""), ("test", "")])
def test_an_empty_split_is_refused_before_training(lite_root, tmp_path, split, content):
    root = _lite_with(tmp_path, lite_root, split, content)
    with pytest.raises(InputError, match=f"circuits in {root}: the {split} split holds no images"):
        train(_config(root, tmp_path / "run", eval_every=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "lr must be finite and > 0, got inf"),
    (["--lr", "nan"], "lr must be finite and > 0, got nan"),
    (["--lr", "0"], "lr must be finite and > 0, got 0.0"),
    (["--lr", "-1"], "lr must be finite and > 0, got -1.0"),
    (["--image-size", "50"], "image_size 50 must be a multiple of the patch size 14 with tokenization"),
    (["--pretrained", "openai"], "tiny builds a randomly initialised tower: it cannot load pretrained ('openai')"),
    (["--on-nonfinite", "ignore"], "on_nonfinite must be one of ('stop', 'skip'), got 'ignore'"),
    (["--resume", "--overwrite"], "resume continues the run in out and overwrite replaces it: give one of them"),
])
def test_settings_that_cannot_train_are_refused_before_any_step(lite_root, tmp_path, flags, message, capsys):
    argv = ["train", "--task", "circuits", "--data-root", str(lite_root), "--out", str(tmp_path / "run"), "--tiny",
            "--image-size", "56", "--tokenization", "{}", "--epochs", "1", *flags]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"lowres-vision train: error: {message}"
    assert not (tmp_path / "run").exists()


def _nan_at(step: int, monkeypatch) -> None:
    """The loss of optimizer step `step` becomes NaN (as a too-large lr would make it)."""
    real, calls = loop.step_loss, []

    def step_loss(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == step else loss

    monkeypatch.setattr(loop, "step_loss", step_loss)


def _parameters_after_each_step(record: dict[int, dict[str, torch.Tensor]]):
    def hook(step: int, model: torch.nn.Module) -> None:
        record[step] = {name: parameter.detach().clone() for name, parameter in model.trainable_parameters()}
    return hook


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(lite_root, tmp_path, monkeypatch):
    _nan_at(4, monkeypatch)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError, match=r"step 4: the loss is nan; the run stopped \(checkpoint of "
                                                      r"step 3 kept\); lower lr, or resume with --on-nonfinite skip"):
        train(_config(lite_root, run, checkpoint_every=1), on_step=_parameters_after_each_step(seen))
    assert sorted(seen) == [1, 2, 3]
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["global_step"] == 3
    checkpoint = load_file(str(run / "checkpoint.safetensors"))
    for name, value in seen[3].items():
        assert torch.equal(checkpoint[f"model.{name}"], value), name
    assert not (run / "trainable.safetensors").exists()


def test_skip_drops_the_update_of_a_non_finite_step_and_logs_it(lite_root, tmp_path, monkeypatch):
    _nan_at(2, monkeypatch)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    run = tmp_path / "run"
    train(_config(lite_root, run, on_nonfinite="skip"), on_step=_parameters_after_each_step(seen))
    for name in seen[1]:
        assert torch.equal(seen[2][name], seen[1][name]), name  # step 2 changed nothing
        assert not torch.equal(seen[3][name], seen[2][name]) or "norm" in name
    skipped = [record for record in _log(run) if record["event"] == "skipped"]
    assert [(record["step"], record["loss"]) for record in skipped] == [(2, "nan")]
    steps = {record["step"]: record["loss"] for record in _log(run) if record["event"] == "step"}
    assert sorted(steps) == [1, 3, 4, 5, 6]
    first_epoch = next(record for record in _log(run) if record["event"] == "epoch")
    assert first_epoch["skipped"] == 1 and first_epoch["loss"] == pytest.approx((steps[1] + steps[3]) / 2)


def test_each_split_has_its_own_results(lite_root, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    test_results = (run / "metrics-test.json").read_bytes(), (run / "predictions-test.npz").read_bytes()
    assert cli.main(["eval", str(run), "--split", "val"]) == 0
    assert ((run / "metrics-test.json").read_bytes(), (run / "predictions-test.npz").read_bytes()) == test_results
    val = json.loads((run / "metrics-val.json").read_text())
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    assert {key: val[key] for key in ("run_id", "split", "parameters", "global_step")} == {
        "run_id": run_id, "split": "val", "parameters": "trainable.safetensors", "global_step": 6}
    assert json.loads(capsys.readouterr().out) == val["metrics"]
    predictions = np.load(run / "predictions-val.npz")
    top1 = 100 * np.mean(predictions["logits"].argmax(1) == predictions["labels"])
    assert val["metrics"]["top1"] == pytest.approx(top1) and str(predictions["split"]) == "val"
