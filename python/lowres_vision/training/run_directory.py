"""The run directory on disk: atomic writes, the resumable checkpoint (with RNG states), the log
and the results files."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

# 3: the epoch's sample counts; 2: the memory bank is one tensor of features (1: a list of batches)
CHECKPOINT_FORMAT = 3

def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Writes through `write(tmp)` then renames over `path`: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)

def write_json(path: Path, value: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, default=str) + "\n"))

def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    cpu = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


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

def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, breaking_loss: Optional[nn.Module],
                     progress: Progress, batch_size: int, world_size: int, seed: int) -> None:
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
    rng_tensors, rng_state = capture_rng_state()
    tensors.update(rng_tensors)
    state = {
        "format": CHECKPOINT_FORMAT,
        **progress.__dict__,
        # The sampler restarts epoch `epoch` at this position of each rank's index list.
        "sampler": {"seed": seed, "epoch": progress.epoch, "start_index": progress.step_in_epoch * batch_size,
                    "num_replicas": world_size, "batch_size": batch_size},
        "optimizer": {"param_groups": optimizer_state["param_groups"], "scalar_state": scalar_state},
        "rng": rng_state,
    }
    # The state also travels in the safetensors metadata, so the one atomic file is self-contained;
    # checkpoint.json is its readable copy.
    save_tensors(run / "checkpoint.safetensors", tensors, metadata={"state": json.dumps(state)})
    write_json(run / "checkpoint.json", state)

def load_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, breaking_loss: Optional[nn.Module],
                     batch_size: int, world_size: int, seed: int) -> Progress:
    from safetensors import safe_open

    path = run / "checkpoint.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as handle:
        state = json.loads(handle.metadata()["state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume: {path} has checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    sampler = state["sampler"]
    if (sampler["seed"], sampler["num_replicas"], sampler["batch_size"]) != (seed, world_size, batch_size):
        raise ValueError(
            f"resume: {path} was written with seed={sampler['seed']}, world size={sampler['num_replicas']}, "
            f"batch_size={sampler['batch_size']}; this run has seed={seed}, world size={world_size}, batch_size={batch_size}"
        )
    parameters = dict(model.trainable_parameters())
    expected = {f"model.{name}" for name in parameters}
    found = {name for name in tensors if name.startswith("model.")}
    if expected != found:
        raise ValueError(f"resume: {path} holds trainable parameters {sorted(found - expected)[:5]} and lacks "
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
            raise ValueError(f"resume: {path} holds no memory bank: it was written by a run without augment_manifest")
        breaking_loss.load_bank(tensors["breaking_loss.bank"].to(next(model.parameters()).device))
    set_rng_state(tensors, state["rng"])
    return Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["epoch_loss_sum"],
                    state["epoch_samples"])

def truncate_log(path: Path, global_step: int) -> None:
    """Drops log lines written after the checkpoint being resumed: those steps are run again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= global_step]
        write_atomic(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))

def append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")

def write_results(run: Path, metrics: dict[str, float], predictions: dict[str, np.ndarray]) -> None:
    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **predictions)

    write_json(run / "metrics.json", metrics)
    write_atomic(run / "predictions.npz", write_npz)
