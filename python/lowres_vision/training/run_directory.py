"""The run directory on disk: its owner (the run id), atomic writes, the resumable checkpoint (with
RNG states), the log and the results files."""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..atomic_files import write_atomic, write_json, write_npz
from ..config import RESUME_MAY_CHANGE, ConfigError, TrainConfig, config_from_dict
from ..errors import InputError
from .selection import BestEpoch

# 5: the best epoch of select="best"; 4: the run id and skipped steps; 3: the epoch's sample counts;
# 2: the memory bank is one tensor of features (1: a list of batches)
CHECKPOINT_FORMAT = 5

def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    cpu = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


# The files a run writes (globs; `plots` is what `lowres-vision plot` adds): what `overwrite` deletes,
# so named one by one (a user's own weights beside a run are not the run's). A file a run adds joins here.
RUN_FILES = ("config.json", "log.jsonl", "checkpoint.json", "checkpoint.safetensors", "trainable.safetensors",
             "best.safetensors", "metrics-*.json", "predictions-*.npz", ".*.tmp", "plots")
RUN_ID = "run_id"  # the one key of config.json that is not a TrainConfig setting


class RunDirectoryError(InputError):
    """A run directory that cannot serve the request: another run's, or files of two runs."""


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def run_files(run: Path) -> list[Path]:
    return sorted({path for pattern in RUN_FILES for path in run.glob(pattern)})


def check_new_run_directory(run: Path, overwrite: bool) -> list[Path]:
    """The files of a run already in `run`, which a new run there replaces: refused unless `overwrite`."""
    existing = run_files(run)
    if existing and not overwrite:
        raise RunDirectoryError(f"out: {run} already holds a run ({', '.join(path.name for path in existing[:3])}"
                                f"{', ...' if len(existing) > 3 else ''}); pass --resume to continue it or "
                                f"--overwrite to replace it")
    return existing


def remove_run_files(paths: list[Path]) -> None:
    for path in sorted(paths, key=lambda path: path.name == "config.json"):  # the file naming the old run last
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def write_run_config(run: Path, run_id: str, cfg: TrainConfig) -> None:
    write_json(run / "config.json", {RUN_ID: run_id, **cfg.to_dict()})


def read_run_config(run: Path) -> tuple[str, dict[str, Any]]:
    """(run id, settings) of the run in `run`."""
    path = run / "config.json"
    if not path.is_file():
        raise RunDirectoryError(f"{run} holds no run (no config.json)")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunDirectoryError(f"{path}: not a run configuration ({error})") from error
    run_id = settings.pop(RUN_ID, None) if isinstance(settings, dict) else None
    if not isinstance(run_id, str):
        raise RunDirectoryError(f"{path} names no run (no {RUN_ID!r}): written by an older version; train it again")
    return run_id, settings


def check_resume(cfg: TrainConfig) -> tuple[str, dict[str, list]]:
    """(run id, {setting: [stored, new]} of the allowed changes) for resuming the run in cfg.out;
    a setting that changes what a step computes, changed, is refused with the list of all such."""
    run = Path(cfg.out)
    run_id, settings = read_run_config(run)
    stored = config_from_dict(settings, source=str(run / "config.json"))
    changed = {field.name: [getattr(stored, field.name), getattr(cfg, field.name)]
               for field in dataclasses.fields(TrainConfig) if getattr(stored, field.name) != getattr(cfg, field.name)}
    refused = [f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items() if name not in RESUME_MAY_CHANGE]
    if refused:
        raise ConfigError(f"resume: these settings differ from {run / 'config.json'}: {'; '.join(refused)}; "
                          f"a run continues with its own settings (start a new run to change them)")
    return run_id, {name: change for name, change in changed.items() if name not in ("resume", "overwrite", "out")}


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }

def set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{index}"] for index in range(len([k for k in tensors if k.startswith("rng.cuda.")]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

# What an epoch's log record counts: task samples as drawn (original, replaced by a label-preserving
# image, GeNIe hard negative) and the (label-breaking, partner) pairs of the contrastive loss.
SAMPLE_KINDS = ("original", "preserving", "genie", "breaking_pairs")

@dataclass
class Progress:
    """Where training stands: what a checkpoint records besides tensors."""

    epoch: int = 0  # the epoch in progress (== cfg.epochs when done)
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # over the steps already taken in `epoch`, for its mean in log.jsonl
    # Samples of each kind those steps used, summed over ranks, for log.jsonl.
    epoch_samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SAMPLE_KINDS, 0))
    epoch_skipped: int = 0  # steps of `epoch` whose non-finite loss was skipped (not in epoch_loss_sum)

def save_checkpoint(run: Path, run_id: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                     breaking_loss: Optional[nn.Module], progress: Progress, batch_size: int, world_size: int,
                     seed: int, best: Optional[BestEpoch] = None) -> None:
    tensors = {f"model.{name}": parameter for name, parameter in model.trainable_parameters()}
    optimizer_state = optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalar_state.setdefault(str(index), {})[key] = value
    if breaking_loss is not None:
        # The memory bank is not in the loss's state_dict; it is part of an exact resume.
        tensors["breaking_loss.bank"] = breaking_loss.bank
    if best is not None:  # the best epoch's parameters live in the one atomic checkpoint until the run ends
        tensors.update({f"best.{name}": tensor for name, tensor in best.parameters.items()})
    rng_tensors, rng_state = capture_rng_state()
    tensors.update(rng_tensors)
    state = {
        "format": CHECKPOINT_FORMAT,
        RUN_ID: run_id,
        **progress.__dict__,
        # The sampler restarts epoch `epoch` at this position of each rank's index list.
        "sampler": {"seed": seed, "epoch": progress.epoch, "start_index": progress.step_in_epoch * batch_size,
                    "num_replicas": world_size, "batch_size": batch_size},
        "optimizer": {"param_groups": optimizer_state["param_groups"], "scalar_state": scalar_state},
        "rng": rng_state,
        **({"best": best.state()} if best is not None else {}),
    }
    # The state also travels in the safetensors metadata, so the one atomic file is self-contained;
    # checkpoint.json is its readable copy.
    save_tensors(run / "checkpoint.safetensors", tensors, metadata={"state": json.dumps(state)})
    write_json(run / "checkpoint.json", state)

def load_checkpoint(run: Path, run_id: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                     breaking_loss: Optional[nn.Module], batch_size: int, world_size: int, seed: int,
                     best: Optional[BestEpoch] = None) -> Progress:
    from safetensors import safe_open

    path = run / "checkpoint.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as handle:
        state = json.loads(handle.metadata()["state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirectoryError(f"resume: {path} has checkpoint format {state.get('format')}, expected "
                                f"{CHECKPOINT_FORMAT}")
    if state.get(RUN_ID) != run_id:
        raise RunDirectoryError(f"resume: {path} belongs to run {state.get(RUN_ID)!r}, {run / 'config.json'} to run "
                                f"{run_id!r}: files of two runs")
    sampler = state["sampler"]
    if (sampler["seed"], sampler["num_replicas"], sampler["batch_size"]) != (seed, world_size, batch_size):
        raise ConfigError(
            f"resume: {path} was written with seed={sampler['seed']}, world size={sampler['num_replicas']}, "
            f"batch_size={sampler['batch_size']}; this run has seed={seed}, world size={world_size}, batch_size={batch_size}"
        )
    parameters = dict(model.trainable_parameters())
    expected = {f"model.{name}" for name in parameters}
    found = {name for name in tensors if name.startswith("model.")}
    if expected != found:
        raise RunDirectoryError(f"resume: {path} holds trainable parameters {sorted(found - expected)[:5]} and lacks "
                                f"{sorted(expected - found)[:5]}: it was written for a different model configuration")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[f"model.{name}"])
    optimizer_state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    for index, entries in state["optimizer"]["scalar_state"].items():
        optimizer_state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": state["optimizer"]["param_groups"]})
    if breaking_loss is not None:
        if "breaking_loss.bank" not in tensors:
            raise RunDirectoryError(f"resume: {path} holds no memory bank: it was written by a run without augment_manifest")
        breaking_loss.load_bank(tensors["breaking_loss.bank"].to(next(model.parameters()).device))
    if best is not None:
        if "best" not in state:
            raise RunDirectoryError(f"resume: {path} was written by a run with select='last'; this run selects the best epoch")
        best.load_state(state["best"], {name[len("best."):]: value for name, value in tensors.items() if name.startswith("best.")})
    set_rng_state(tensors, state["rng"])
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["epoch_loss_sum"],
                    state["epoch_samples"], state["epoch_skipped"])

def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of log.jsonl; a torn last line (a write cut short) is dropped, a bad line elsewhere refused."""
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise RunDirectoryError(f"{path}, line {number}: not a log record ({error})") from error
    return records


def truncate_log(path: Path, global_step: int) -> None:
    """Drops log lines written after the checkpoint being resumed (those steps are run again) and a torn last line."""
    kept = [record for record in read_log(path) if record.get("step", 0) <= global_step]
    write_atomic(path, lambda tmp: tmp.write_text("".join(f"{json.dumps(record)}\n" for record in kept)))


def append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def save_trainable(run: Path, run_id: str, parameters: dict[str, torch.Tensor], global_step: int, *,
                   name: str = "trainable.safetensors", selection: Optional[dict[str, Any]] = None) -> None:
    """Trainable parameters (of step `global_step`; `selection`: which epoch and why, for best.safetensors)."""
    metadata = {RUN_ID: run_id, "global_step": str(global_step), **({"selection": json.dumps(selection)} if selection else {})}
    save_tensors(run / name, parameters, metadata=metadata)


def load_trainable(run: Path, name: str = "trainable.safetensors") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of run/`name`, refused unless it belongs to the run of config.json."""
    from safetensors import safe_open

    run_id, _ = read_run_config(run)
    path = run / name
    if not path.is_file():
        raise FileNotFoundError(f"evaluate: no trained parameters at {path} (has `train` finished?)")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if metadata.get(RUN_ID) != run_id:
        raise RunDirectoryError(f"{path} belongs to run {metadata.get(RUN_ID)!r}, {run / 'config.json'} to run "
                                f"{run_id!r}: files of two runs")
    return tensors, metadata


def check_run_files(run: Path) -> None:
    """Refuses a run directory whose files do not all carry the run id of its config.json."""
    from safetensors import safe_open

    run_id, _ = read_run_config(run)
    found: dict[Path, Optional[str]] = {}
    for path in run_files(run):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            found[path] = metadata.get(RUN_ID) or json.loads(metadata.get("state", "{}")).get(RUN_ID)
        elif path.suffix == ".json" and path.name != "config.json":
            found[path] = json.loads(path.read_text()).get(RUN_ID)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as predictions:
                found[path] = str(predictions[RUN_ID]) if RUN_ID in predictions else None
        elif path.name == "log.jsonl":
            found[path] = next(iter(read_log(path)), {}).get(RUN_ID)
    foreign = sorted(f"{path.name} ({other!r})" for path, other in found.items() if other != run_id)
    if foreign:
        raise RunDirectoryError(f"{run}: {', '.join(foreign)} do not belong to run {run_id!r} of config.json: "
                                f"files of two runs")


def write_results(run: Path, split: str, metrics: dict[str, float], predictions: dict[str, np.ndarray], *,
                  run_id: str, global_step: int, parameters: str = "trainable.safetensors",
                  selection: Optional[dict[str, Any]] = None) -> None:
    """metrics-<split>.json and predictions-<split>.npz, each naming the run, the split and the
    parameters evaluated (the file `parameters`, of step `global_step`); metrics-<split>.json also
    the `selection` of best.safetensors (epoch, criterion, value)."""
    source = {RUN_ID: run_id, "split": split, "parameters": parameters, "global_step": global_step}

    write_npz(run / f"predictions-{split}.npz", {**predictions, **{key: np.array(value) for key, value in source.items()}})
    write_json(run / f"metrics-{split}.json", {**source, **({"selection": selection} if selection else {}), "metrics": metrics})
