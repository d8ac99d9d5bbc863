"""The one error convention of `lowres-vision` (lowres_vision.cli): a bad setting or input is one line
on stderr and exit 2, an environment fault one line and exit 1, a traceback only with --debug."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from lowres_vision import cli
from lowres_vision.config import ConfigError
from lowres_vision.data import DatasetFormatError, ImageReadError
from lowres_vision.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--tiny", "--image-size", "56", "--batch-size", "4", "--lr", "0.01", "--eval-every", "0", "--select", "last", "--epochs", "1"]


def one_line_error(captured, command: str) -> str:
    """The message of the single stderr line `lowres-vision COMMAND: error: ...`, with no traceback."""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    prefix = f"lowres-vision {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


@pytest.mark.parametrize("error, status, message", [
    (InputError("lr must be > 0"), 2, "lr must be > 0"),
    (ConfigError("epochs must be >= 1"), 2, "epochs must be >= 1"),
    (DatasetFormatError("/data/train.csv", "no rows"), 2, "/data/train.csv: no rows"),
    (ImageReadError("/data/x.png", "truncated"), 2, "cannot read image /data/x.png: truncated"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x"), 2, "No such file or directory: /data/x"),
    (FileNotFoundError("run directory /runs/a does not exist"), 2, "run directory /runs/a does not exist"),
    (OSError(errno.EROFS, "Read-only file system", "/runs/a/config.json"), 1, "Read-only file system: /runs/a/config.json"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/a/.x.tmp", None, "/runs/a/x"), 1,
     "Permission denied: /runs/a/.x.tmp -> /runs/a/x"),
    (RuntimeError("a bug"), 1, "unexpected RuntimeError: a bug"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_each_kind_of_error_has_its_status_and_message(error, status, message):
    assert cli.describe_error(error) == (status, message)


def _train(lite_root, out, *extra) -> list[str]:
    return ["train", "--task", "circuits", "--data-root", str(lite_root), "--out", str(out), "--linear-probe", *TINY, *extra]


def _read_only_disk(monkeypatch):
    """Every atomic write fails as on a read-only file system (tests run as root, where chmod does not stop writes)."""
    def refuse(source, target):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(os, "replace", refuse)


def test_a_read_only_run_directory_is_one_line_and_exit_1(lite_root, tmp_path, monkeypatch, capsys):
    _read_only_disk(monkeypatch)
    assert cli.main(_train(lite_root, tmp_path / "run")) == 1
    message = one_line_error(capsys.readouterr(), "train")
    assert message.startswith("Read-only file system: ") and str(tmp_path / "run") in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the monkeypatched test above covers it")
def test_a_chmod_read_only_out_is_one_line_and_exit_1(lite_root, tmp_path, capsys):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    try:
        assert cli.main(_train(lite_root, tmp_path / "locked" / "run")) == 1
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert one_line_error(capsys.readouterr(), "train").startswith("Permission denied: ")


def test_debug_prints_the_traceback_before_or_after_the_command(lite_root, tmp_path, monkeypatch, capsys):
    _read_only_disk(monkeypatch)
    assert cli.main(["--debug", *_train(lite_root, tmp_path / "a")]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert cli.main([*_train(lite_root, tmp_path / "b"), "--debug"]) == 1
    captured = capsys.readouterr().err
    assert "Traceback (most recent call last)" in captured and "OSError: [Errno 30]" in captured


def test_an_unavailable_device_is_a_setting_error(lite_root, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(_train(lite_root, tmp_path / "run", "--device", "cuda")) == 2
    assert one_line_error(capsys.readouterr(), "train") == (
        "device 'cuda': CUDA is not available on this machine (use 'cpu' or 'auto')")
    assert not (tmp_path / "run").exists()
    assert cli.main(_train(lite_root, tmp_path / "run", "--device", "cuda:x")) == 2
    assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'" in capsys.readouterr().err
    for argv in (["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "synth"), "--device", "cuda"],
                 ["augment", "--data-root", str(lite_root), "--task", "circuits", "--out", str(tmp_path / "aug"),
                  "--tiny", "--device", "cuda"]):
        assert cli.main(argv) == 2
        assert one_line_error(capsys.readouterr(), argv[0]).startswith("device 'cuda': CUDA is not available")
    assert not any((tmp_path / name).exists() for name in ("demo", "synth", "aug"))  # refused before any work


def test_plot_of_a_missing_run_and_synth_of_a_bad_scale(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "nowhere")]) == 2
    assert one_line_error(capsys.readouterr(), "plot") == f"run directory {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "empty").mkdir()
    assert cli.main(["plot", str(tmp_path / "empty")]) == 2
    assert one_line_error(capsys.readouterr(), "plot").startswith(f"{tmp_path / 'empty'}: nothing to plot")
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "synth"), "--workers", "-1"]) == 2
    assert one_line_error(capsys.readouterr(), "demo") == "workers must be >= 0, got -1"
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "synth"), "--image-cache-mb", "-1"]) == 2
    assert one_line_error(capsys.readouterr(), "demo") == "image_cache_mb must be >= 0, got -1"
    assert not (tmp_path / "demo").exists()
    assert cli.main(["synth", "--out", str(tmp_path / "synth"), "--scale", "0"]) == 2
    assert one_line_error(capsys.readouterr(), "synth") == "--scale must be in (0, 1], got 0.0"
    assert not (tmp_path / "synth").exists()


@pytest.fixture(scope="module")
def tiny_circuits(tmp_path_factory):
    from test_core import write_tiny_circuits

    root = tmp_path_factory.mktemp("zeroshot")
    write_tiny_circuits(root / "lite")
    (root / "empty.txt").write_text("\n  \n")
    (root / "captions.csv").write_text("text,source\na photo,web\n")
    return root


@pytest.mark.parametrize("flags, message", [
    (["--captions", "{root}/missing.txt"], "caption corpus {root}/missing.txt does not exist"),
    (["--captions", "{root}/empty.txt"], "--captions {root}/empty.txt: the caption corpus holds no captions"),
    (["--captions", "{root}/captions.csv", "--caption-column", "caption"],
     "caption corpus {root}/captions.csv: no column 'caption' (columns: ['text', 'source'])"),
    (["--k", "0"], "k must be >= 1, got 0"),
    (["--alpha", "-5"], "alpha must lie in [0, 1], got -5.0"),
    (["--image-temperature", "0"], "image_temperature must be > 0, got 0.0"),
    (["--text-temperature", "0"], "text_temperature must be > 0, got 0.0"),
    (["--template", "a photo"], "prompt template 'a photo' must contain exactly one '{{}}' for the class name"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_zeroshot_bad_inputs_are_one_line_errors_before_any_work(tiny_circuits, flags, message, capsys):
    out = tiny_circuits / "out"
    argv = ["zeroshot", "--task", "circuits", "--data-root", str(tiny_circuits / "lite"), "--tiny", "--out", str(out),
            *(flag.format(root=tiny_circuits) for flag in flags)]
    assert cli.main(argv) == 2
    assert one_line_error(capsys.readouterr(), "zeroshot") == message.format(root=tiny_circuits)
    assert not out.exists()  # refused before anything was written
