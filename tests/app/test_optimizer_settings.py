"""Adam's settings: the authors' release's betas and weight decay by default, each one reaching the step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowres_vision.config import ConfigError, TrainConfig
from lowres_vision.training import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(lite_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(task="circuits", data_root=str(lite_root), tiny=True, image_size=56, epochs=1, batch_size=4,
                    lr=1e-2, out=str(out), eval_every=0, select="last", tokenization={"pool": "avg"}, seed=0)
    return TrainConfig(**{**settings, **overrides})


def test_defaults_are_the_releases_adam():
    cfg = TrainConfig(task="circuits", data_root="x")
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay) == (0.95, 0.999, 5e-7)


def test_the_optimizer_gets_each_setting_and_each_changes_what_is_learned(lite_root, tmp_path, monkeypatch):
    made = []
    real_adam = torch.optim.Adam

    def recording_adam(parameters, **options):
        made.append(options)
        return real_adam(parameters, **options)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    runs = {"release": {}, "beta1": {"adam_beta1": 0.9}, "beta2": {"adam_beta2": 0.99}, "decay": {"weight_decay": 0.5}}
    learned = {}
    for name, overrides in runs.items():
        cfg = _config(lite_root, tmp_path / name, **overrides)
        train(cfg)
        assert made[-1] == {"lr": 1e-2, "betas": (cfg.adam_beta1, cfg.adam_beta2), "weight_decay": cfg.weight_decay}
        learned[name] = load_file(str(tmp_path / name / "trainable.safetensors"))
    # Three steps: beta1 and beta2 shape the second and third updates, weight decay every one.
    for name in ("beta1", "beta2", "decay"):
        assert any(not torch.equal(learned[name][key], learned["release"][key]) for key in learned["release"]), name


@pytest.mark.parametrize("setting, value", [("adam_beta1", 1.0), ("adam_beta2", -0.1), ("weight_decay", -1.0),
                                            ("weight_decay", float("inf"))])
def test_out_of_range_adam_settings_name_themselves(setting, value):
    with pytest.raises(ConfigError, match=setting):
        TrainConfig(task="circuits", data_root="x", **{setting: value}).validate()
