"""`TrainConfig`: every setting of a training / evaluation run, from a JSON or TOML file plus overrides.

    cfg = load_config("run.toml", {"epochs": 5})     # file values, then overrides, then validation
    cfg = TrainConfig(task="circuits", data_root="LITE", tokenization={"pool": "avg"})

The baseline options (`tokenization`, `domain_attention`, `adapter`) are the keyword dicts of
`lowres_vision.inject` (None = not used, {} = the defaults).

`linear_probe` trains nothing in the backbone: "logreg" (the authors' release) fits a logistic
regression (C = 0.316, max_iter 1000) on the frozen class tokens of a classification task, "head"
trains the task head with Adam for `epochs`. Retrieval tasks have no classes to regress: their linear
probe is "head", the embedding head (LayerNorm and projection) trained with the contrastive loss.
Config files written when it was a bool still load: true meant the trained head ("head"), false None.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from .data import is_retrieval, task_names
from .errors import InputError


BASELINES = ("tokenization", "domain_attention", "adapter")  # the injections of lowres_vision.inject
LINEAR_PROBES = ("logreg", "head")
SELECT_MODES = ("best", "last")  # model selection (lowres_vision.training.selection)
SELECT_CRITERIA = {False: ("top1",), True: ("loss", "R@1")}  # by is_retrieval(task); the first is the release's
NONFINITE_POLICIES = ("stop", "skip")
# The settings a resumed run may change: how long it trains, how often it logs, evaluates and
# checkpoints, where it reads and runs, what it finally evaluates; not what a step computes.
# (Were an lr schedule to depend on `epochs`, epochs would leave this list.)
RESUME_MAY_CHANGE = ("epochs", "data_root", "out", "device", "num_workers", "eval_batch_size", "eval_every",
                     "eval_split", "checkpoint_every", "log_every", "resume", "overwrite", "on_nonfinite")


class ConfigError(InputError):
    """A configuration value or file is invalid; the message names the setting."""


@dataclass
class TrainConfig:
    # What to train on.
    task: str
    data_root: str
    # The frozen backbone (an open_clip vision tower; `tiny` builds the small test/demo config).
    backbone: str = "ViT-B-16"
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None
    tiny: bool = False
    image_size: int = 224
    # Baselines (kwargs of lowres_vision.inject); linear_probe ("logreg" or "head") fits or trains the head alone.
    tokenization: Optional[dict] = None
    domain_attention: Optional[dict] = None
    adapter: Optional[dict] = None
    linear_probe: Optional[str] = field(default=None, metadata={"flag_alone": "logreg"})
    # Optimisation (the paper: Adam, lr 1e-3, batch 8, 90 epochs; the release: lr 5e-4, batch 4).
    epochs: int = 90
    batch_size: int = 8
    lr: float = 1e-3
    # Adam's other settings, on which the paper is silent: the authors' release's (scripts/train_*.py).
    weight_decay: float = 5e-7
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    logit_scale: float = 80.0
    train_augment: bool = False
    seed: int = 0
    # The LITE paper's augmentation baselines (its Table 3), torchvision.transforms.v2; 0 = off.
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha) (classification)
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha) (classification); with mixup, one of the two per batch
    random_erasing: float = 0.0  # probability of Random Erasing per training image
    # Generated-data augmentation (the LITE paper, arXiv:2401.04716, Sec. 3.1); used when augment_manifest is set.
    augment_manifest: Optional[str] = None
    replace_prob: float = 0.3
    replaced_weight: float = 0.65
    breaking_loss_weight: float = 0.1
    bank_size: int = 100  # label-breaking features in the memory bank: the paper's N; the release's is 40 x 4 = 160
    # GeNIe hard negatives (arXiv 2312.02548): the genie images of this manifest join the training set,
    # labelled with their target class (classification tasks).
    genie_manifest: Optional[str] = None
    # Run directory, hardware, bookkeeping.
    out: Optional[str] = None
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    eval_batch_size: int = 64
    eval_every: int = 1
    eval_split: str = "test"
    # Which epoch's parameters give the metrics: "best" on the validation split (by select_by, default
    # the release's: top1 for classification, loss for retrieval; "R@1" for retrieval too) or "last".
    select: str = "best"
    select_by: Optional[str] = None
    checkpoint_every: int = 0
    log_every: int = 1
    resume: bool = False
    overwrite: bool = False  # a new run in `out` replaces the run there (else that is refused)
    on_nonfinite: str = "stop"  # a step with a non-finite loss: "stop" the run, or "skip" its update

    def validate(self) -> "TrainConfig":
        if isinstance(self.linear_probe, bool):  # the old bool setting: true trained the head
            self.linear_probe = "head" if self.linear_probe else None
        _check_types(self)
        if self.task not in task_names():
            raise ConfigError(f"task must be one of {task_names()}, got {self.task!r}")
        for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "bank_size", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "logit_scale", "replaced_weight"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        for name in ("replace_prob", "random_erasing"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
            if getattr(self, name) > 0 and is_retrieval(self.task):
                raise ConfigError(f"{name} mixes class labels; task {self.task!r} is a retrieval task")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.breaking_loss_weight < 0:
            raise ConfigError(f"breaking_loss_weight must be >= 0, got {self.breaking_loss_weight}")
        if not math.isfinite(self.breaking_loss_weight):
            raise ConfigError(f"breaking_loss_weight must be finite, got {self.breaking_loss_weight}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")
        _check_selection(self)
        if self.eval_split not in ("val", "test"):
            raise ConfigError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        baselines = [name for name in BASELINES if getattr(self, name) is not None]
        if self.linear_probe is not None and self.linear_probe not in LINEAR_PROBES:
            raise ConfigError(f"linear_probe must be one of {LINEAR_PROBES} or none, got {self.linear_probe!r}")
        if self.linear_probe and baselines:
            raise ConfigError(f"linear_probe trains the head alone; it cannot be combined with {', '.join(baselines)}")
        if self.linear_probe == "logreg":
            _check_logistic_regression_probe(self)
        if self.resume and not self.out:
            raise ConfigError("resume needs out (the run directory holding checkpoint.safetensors)")
        if self.resume and self.overwrite:
            raise ConfigError("resume continues the run in out and overwrite replaces it: give one of them")
        if self.pretrained and self.checkpoint:
            raise ConfigError(f"give pretrained ({self.pretrained!r}) or checkpoint ({self.checkpoint!r}), not both")
        if self.genie_manifest is not None and is_retrieval(self.task):
            raise ConfigError(f"genie_manifest: GeNIe hard negatives are labelled with a class; task {self.task!r} "
                              f"is a retrieval task")
        if self.tiny and (self.pretrained or self.checkpoint):
            weights = "pretrained" if self.pretrained else "checkpoint"
            raise ConfigError(f"tiny builds a randomly initialised tower: it cannot load {weights} "
                              f"({self.pretrained or self.checkpoint!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_device(self) -> str:
        return check_device(self.device)


def _check_selection(cfg: TrainConfig) -> None:
    if cfg.select not in SELECT_MODES:
        raise ConfigError(f"select must be one of {SELECT_MODES}, got {cfg.select!r}")
    criteria = SELECT_CRITERIA[is_retrieval(cfg.task)]
    if cfg.select_by is not None and cfg.select_by not in criteria:
        raise ConfigError(f"select_by for task {cfg.task!r} must be one of {criteria}, got {cfg.select_by!r}")
    if cfg.select == "best" and cfg.eval_every == 0 and cfg.linear_probe != "logreg":
        raise ConfigError("select='best' picks an epoch by its validation metrics, and eval_every=0 never validates; "
                          "set eval_every >= 1 or select='last'")


def check_device(device: Optional[str]) -> str:
    """`device` ('cpu', 'cuda', 'cuda:N'; 'auto' or None: cuda when available, else cpu) if this
    machine has it, else a ConfigError naming it."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def _check_logistic_regression_probe(cfg: TrainConfig) -> None:
    if is_retrieval(cfg.task):
        raise ConfigError(f"linear_probe='logreg' fits a classifier and needs class labels; {cfg.task} is a retrieval "
                          "task: use linear_probe='head' (the embedding head trained with the contrastive loss)")
    # The regression is fitted once on the train split's images as evaluated.
    unused = [name for name in ("augment_manifest", "genie_manifest", "train_augment", "mixup", "cutmix", "random_erasing", "resume")
              if getattr(cfg, name)]
    if unused:
        raise ConfigError(f"linear_probe='logreg' is fitted once on the unaugmented train images; {', '.join(unused)} "
                          "does not apply (use linear_probe='head' to train with it)")


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
DISABLED = "none"  # a baseline flag's value that switches off a baseline set in the config file


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON (.json) or TOML (.toml) file -> a dict of settings (unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        if path.suffix.lower() == ".toml":
            with open(path, "rb") as handle:
                values = tomllib.load(handle)
        elif path.suffix.lower() == ".json":
            values = json.loads(path.read_text())
        else:
            raise ConfigError(f"config file {path}: expected a .json or .toml file")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path}: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a table/object of settings, got {type(values).__name__}")
    return values


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None, *,
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Settings of `base` (e.g. a stored run's), then of `path` (optional), then `overrides` (e.g. CLI
    flags; None values are ignored)."""
    values = dict(base or {})
    values.update(read_config_file(path) if path is not None else {})
    values.update({name: value for name, value in (overrides or {}).items() if value is not None})
    values = {name: None if value is DISABLED else value for name, value in values.items()}
    return config_from_dict(values, source=str(path) if path is not None else "settings")


def config_from_dict(values: Mapping[str, Any], *, source: str = "settings") -> TrainConfig:
    unknown = [name for name in values if name not in FIELD_NAMES]
    if unknown:
        hints = {name: difflib.get_close_matches(name, FIELD_NAMES, n=1) for name in unknown}
        described = ", ".join(f"{name!r}" + (f" (did you mean {hints[name][0]!r}?)" if hints[name] else "") for name in unknown)
        raise ConfigError(f"{source}: unknown setting(s) {described}")
    missing = [name for name in ("task", "data_root") if name not in values]
    if missing:
        raise ConfigError(f"{source}: missing required setting(s) {', '.join(missing)}")
    return TrainConfig(**values).validate()


def _check_types(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for name in FIELD_NAMES:
        value, expected = getattr(cfg, name), hints[name]
        optional = typing.get_origin(expected) is typing.Union and type(None) in typing.get_args(expected)
        if optional:
            if value is None:
                continue
            expected = next(arg for arg in typing.get_args(expected) if arg is not type(None))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, name, float(value))
            continue
        valid = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not valid:
            wanted = expected.__name__ + (" or null" if optional else "")
            raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def _parse_options(text: str) -> dict | str:
    if text.strip().lower() == DISABLED:
        return DISABLED
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object (e.g. '{{\"pool\": \"avg\"}}') or 'none', got {text!r}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object or 'none', got {text!r}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per TrainConfig field (`data_root` -> `--data-root`), all defaulting to "not given".

    Dict settings take a JSON object (`--tokenization '{"pool": "avg"}'`, `'{}'` for the defaults)
    or `none`; booleans have `--flag/--no-flag`; a field whose metadata has "flag_alone" takes that
    value from its flag given without one (`--linear-probe` is `--linear-probe logreg`).
    """
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("settings (override the config file; see lowres_vision.config.TrainConfig)")
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        kind = hints[spec.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        shown = "required unless in --config" if spec.default is dataclasses.MISSING else f"default: {spec.default}"
        if kind is bool:
            group.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None, help=shown)
        elif kind is dict:
            group.add_argument(flag, dest=spec.name, type=_parse_options, default=None, metavar="JSON",
                               help=f"JSON object of options, or 'none' ({shown})")
        elif "flag_alone" in spec.metadata:
            group.add_argument(flag, dest=spec.name, type=kind, default=None, nargs="?", const=spec.metadata["flag_alone"],
                               metavar=kind.__name__.upper(), help=f"{shown}; the flag alone: {spec.metadata['flag_alone']}")
        else:
            group.add_argument(flag, dest=spec.name, type=kind, default=None, metavar=kind.__name__.upper(), help=shown)


def config_from_args(args: argparse.Namespace, config_path: str | os.PathLike | None = None, *,
                     base: Mapping[str, Any] | None = None) -> TrainConfig:
    """`base`, then the config file (if any), overridden by the flags of `add_config_arguments` that were given."""
    return load_config(config_path, {name: getattr(args, name) for name in FIELD_NAMES}, base=base)
