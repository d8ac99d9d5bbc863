"""Training and evaluation of a frozen backbone with the LITE baselines.

    metrics = train(cfg)       # writes the run directory cfg.out
    metrics = evaluate(cfg)    # re-evaluates the trained parameters of cfg.out

The run directory:
    config.json                the resolved TrainConfig
    log.jsonl                  one object per logged step ("event": "step") and per epoch ("event": "epoch",
                               with the mean epoch loss and validation metrics such as "val/top1")
    checkpoint.safetensors     the latest resumable state (trainable parameters, optimizer, loss state,
    checkpoint.json              RNG states, epoch, step within the epoch, sampler position); written
                               atomically every `checkpoint_every` steps and at each epoch end
    trainable.safetensors      the final trainable parameters, keyed by module path ("visual.conv1.logits")
    metrics.json               classification top1/top5 (percent); retrieval R@k (percent), mean/median rank
    predictions.npz            classification logits/labels/class_names; retrieval embeddings, ground truth, paths

A run stopped at any point and restarted with `resume=True` ends with exactly the parameters of an
uninterrupted run: batch order comes from a seeded sampler that is restarted at the saved
position, and per-sample augmentation is seeded by (seed, epoch, index) (`EpochSeededDataset`).
Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (gloo on CPU, nccl on GPU);
rank r takes every world-size-th sample of the same permutation, so a step sees the same global
batch as a single process with batch `batch_size * world_size`; only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .config import ConfigError, TrainConfig
from .data import (
    ClassificationDataset,
    ClassificationSplit,
    EpochSeededDataset,
    ImageListDataset,
    PairDataset,
    RetrievalSplit,
    eval_transform,
    is_retrieval,
    load_split,
    train_transform,
)

CHECKPOINT_FORMAT = 1
StepHook = Callable[[int, nn.Module], None]  # (global step, the model being trained)


# --------------------------------------------------------------------------------------------- I/O


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Writes through `write(tmp)` then renames over `path`: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, default=str) + "\n"))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    cpu = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    _write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


# ------------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class _Distributed:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this call initialised the process group and must tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(cfg: TrainConfig) -> _Distributed:
    """Joins the process group of torchrun (WORLD_SIZE > 1) or of a caller that already made one."""
    device = torch.device(cfg.resolved_device())
    joined = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if joined else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and device.type == "cuda" and device.index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        if local_rank is None and not joined:
            raise RuntimeError("train: WORLD_SIZE > 1 on CUDA needs LOCAL_RANK (launch with torchrun)")
        index = int(local_rank) if local_rank is not None else dist.get_rank() % torch.cuda.device_count()
        device = torch.device("cuda", index)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL initialises, so each rank binds its own GPU
    owns_group = world_size > 1 and not joined
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Distributed(dist.get_rank() if world_size > 1 else 0, world_size, device, owns_group)


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler (seeded per-epoch permutation, rank r takes every world-size-th index)
    that can start an epoch part-way through, at the sample a checkpoint recorded."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"sampler start_index {start_index} outside [0, {self.num_samples}]")
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


# ------------------------------------------------------------------------------------ RNG states


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{index}"] for index in range(len([k for k in tensors if k.startswith("rng.cuda.")]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------- checkpoints


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


@dataclass
class _Progress:
    """Where training stands: what a checkpoint records besides tensors."""

    epoch: int = 0  # the epoch in progress (== cfg.epochs when done)
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # over the steps already taken in `epoch`, for its mean in log.jsonl


def _save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, breaking_loss: Optional[nn.Module],
                     progress: _Progress, batch_size: int, world_size: int, seed: int) -> None:
    tensors = {f"model.{name}": parameter for name, parameter in _trainable(model).items()}
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
        tensors.update({f"bank.{index}": keys for index, keys in enumerate(breaking_loss.bank)})
    rng_tensors, rng_state = _rng_state()
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
    _save_tensors(run / "checkpoint.safetensors", tensors, metadata={"state": json.dumps(state)})
    _write_json(run / "checkpoint.json", state)


def _load_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, breaking_loss: Optional[nn.Module],
                     batch_size: int, world_size: int, seed: int) -> _Progress:
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
    parameters = _trainable(model)
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
        breaking_loss.reset()
        for index in range(sum(name.startswith("bank.") for name in tensors)):
            breaking_loss.bank.append(tensors[f"bank.{index}"].to(next(model.parameters()).device))
    _set_rng_state(tensors, state["rng"])
    return _Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["epoch_loss_sum"])


def _truncate_log(path: Path, global_step: int) -> None:
    """Drops log lines written after the checkpoint being resumed: those steps are run again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= global_step]
        _write_atomic(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


# ----------------------------------------------------------------------------------------- model


def _tower_width(visual: nn.Module) -> int:
    # open_clip VisionTransformer: transformer.width; timm VisionTransformer: embed_dim.
    transformer = getattr(visual, "transformer", None)
    width = getattr(transformer, "width", None) or getattr(visual, "embed_dim", None)
    if not isinstance(width, int):
        raise ValueError(f"cannot tell the token width of a {type(visual).__name__} tower")
    return width


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen backbone with cfg's baselines injected and a task head, and its preprocessing config.

    Classification (`num_classes` given) gets a trainable `ClassificationHead`. Retrieval gets an
    `EmbeddingHead` copied from the tower's own final norm and projection, so it starts from the
    frozen model's embedding; it is trained only by a linear probe. Seeded by cfg.seed, so that
    randomly initialised backbones and heads are the same in every run and process.
    """
    from .models import ClassificationHead, EmbeddingHead, LowresModel, build_backbone, inject

    _seed_everything(cfg.seed)
    visual, preprocess = build_backbone(cfg.backbone, cfg.pretrained, checkpoint=cfg.checkpoint,
                                        image_size=cfg.image_size, tiny=cfg.tiny)
    try:
        inject(visual, tokenization=cfg.tokenization, domain_attention=cfg.domain_attention, adapter=cfg.adapter)
    except ValueError as error:  # options that do not fit this backbone (say, sub=7 with 16-pixel patches)
        raise ConfigError(f"{cfg.backbone}: {error}") from error
    if num_classes is not None:
        head = ClassificationHead(_tower_width(visual), num_classes)
    else:
        try:
            head = EmbeddingHead.from_visual(visual)
        except ValueError:  # a tower without an open_clip final norm/projection (timm)
            head = EmbeddingHead(_tower_width(visual))
        head.requires_grad_(cfg.linear_probe)
    return LowresModel(visual, head), preprocess


# ------------------------------------------------------------------------------------------ data


def _transforms(preprocess: dict[str, Any], augment: bool):
    options = {"mean": preprocess["mean"], "std": preprocess["std"]}
    return train_transform(preprocess["image_size"], augment=augment, **options), eval_transform(preprocess["image_size"], **options)


def _class_names(cfg: TrainConfig) -> Optional[tuple[str, ...]]:
    if is_retrieval(cfg.task):
        return None
    split = load_split(cfg.task, cfg.data_root, "train")
    return split.class_names


def _train_dataset(cfg: TrainConfig, transform) -> torch.utils.data.Dataset:
    split = load_split(cfg.task, cfg.data_root, "train")
    if isinstance(split, RetrievalSplit):
        return PairDataset(split, transform)
    dataset = ClassificationDataset(split, transform)
    if cfg.augment_manifest is not None:
        from .augment.data import AugmentedDataset

        dataset = AugmentedDataset(dataset, cfg.augment_manifest, replace_prob=cfg.replace_prob,
                                   replaced_weight=cfg.replaced_weight, seed=cfg.seed)
    return dataset


# ------------------------------------------------------------------------------------ evaluation


def _autocast(device: torch.device, amp: bool):
    # bf16 needs no loss scaling; on CPU autocast would only slow the tiny runs down.
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


@torch.no_grad()
def _run(model: nn.Module, dataset, cfg: TrainConfig, device: torch.device, description: str) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers)
    outputs = []
    for batch in tqdm(loader, desc=description, leave=False, dynamic_ncols=True):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        with _autocast(device, cfg.amp):
            outputs.append(model(images.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs)


def _evaluate_split(model: nn.Module, cfg: TrainConfig, split_name: str, transform, device: torch.device,
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and predictions (the predictions.npz arrays) of `model` on one split."""
    from .metrics import average_metrics, retrieval_metrics, retrieval_ranks, topk_accuracy

    was_training = model.training
    model.eval()
    split = load_split(cfg.task, cfg.data_root, split_name)
    try:
        if isinstance(split, ClassificationSplit):
            logits = _run(model, ClassificationDataset(split, transform), cfg, device, f"eval {split_name}")
            labels = torch.tensor(split.labels)
            metrics = topk_accuracy(logits, labels, (1, 5))
            return metrics, {"logits": logits.numpy(), "labels": labels.numpy(), "class_names": np.array(split.class_names)}
        queries = _run(model, ImageListDataset(split.query_paths, transform), cfg, device, f"embed {split_name} queries")
        gallery = _run(model, ImageListDataset(split.gallery_paths, transform), cfg, device, f"embed {split_name} gallery")
        ground_truth = torch.tensor(split.ground_truth)
        metrics = retrieval_metrics(retrieval_ranks(queries, gallery, ground_truth))
        if split.symmetric:
            # Every gallery image has exactly one query: the inverse permutation is the reverse ground truth.
            reverse = retrieval_metrics(retrieval_ranks(gallery, queries, torch.argsort(ground_truth)))
            metrics = {
                **average_metrics(metrics, reverse),
                **{f"query_to_gallery/{name}": value for name, value in metrics.items()},
                **{f"gallery_to_query/{name}": value for name, value in reverse.items()},
            }
        return metrics, {
            "query_embeddings": queries.numpy(), "gallery_embeddings": gallery.numpy(),
            "ground_truth": ground_truth.numpy(),
            "query_paths": np.array([str(path) for path in split.query_paths]),
            "gallery_paths": np.array([str(path) for path in split.gallery_paths]),
        }
    finally:
        model.train(was_training)


def _write_results(run: Path, metrics: dict[str, float], predictions: dict[str, np.ndarray]) -> None:
    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **predictions)

    _write_json(run / "metrics.json", metrics)
    _write_atomic(run / "predictions.npz", write_npz)


# -------------------------------------------------------------------------------------- training


class _StepForward(nn.Module):
    """Everything a step needs from the model in one forward, so that DDP sees (and syncs) all of it.

    images [B, 3, H, W] -> (head outputs of the first `num_task` images, class tokens of the rest);
    the rest are the label-breaking pairs of the contrastive loss.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, num_task: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_tokens(images)
        return self.model.head(tokens[:num_task]), tokens[num_task:, 0]


def _step_loss(forward: nn.Module, batch, pairs, breaking_loss: Optional[nn.Module], cfg: TrainConfig,
               device: torch.device) -> torch.Tensor:
    """Task loss (+ breaking_loss_weight x the label-breaking contrastive loss when `pairs` is given)."""
    from .losses import symmetric_contrastive_loss, weighted_cross_entropy

    if is_retrieval(cfg.task):
        # Both sides of every pair go through the shared backbone.
        images, labels, weights = torch.cat(batch), None, None
    else:
        images, labels, *weights = batch
        weights = weights[0] if weights else None
    num_task = len(images)
    if pairs is not None:
        images = torch.cat([images, *pairs])
    with _autocast(device, cfg.amp):
        outputs, features = forward(images.to(device, non_blocking=True), num_task)
    outputs, features = outputs.float(), features.float()
    if labels is None:
        queries, gallery = outputs.split(num_task // 2)
        loss = symmetric_contrastive_loss(queries, gallery, logit_scale=cfg.logit_scale)
    else:
        weights = None if weights is None else weights.to(device, torch.float32)
        loss = weighted_cross_entropy(outputs, labels.to(device), weights)
    if pairs is not None:
        breaking, partners = features.split(len(pairs[0]))
        loss = loss + cfg.breaking_loss_weight * breaking_loss(breaking, partners)
    return loss


def _breaking_pair_batches(cfg: TrainConfig, transform, context: _Distributed, start_step: int):
    """An endless iterator of (label-breaking, partner) image batches, batch s at optimizer step s.

    The pairs are cycled in seeded per-pass permutations (sharded over ranks like the task data);
    starting at `start_step` resumes exactly where a checkpoint left off.
    """
    from .augment.data import BreakingPairs

    pairs = BreakingPairs(cfg.augment_manifest, transform)
    if len(pairs) == 0:
        raise ValueError(f"augment_manifest {cfg.augment_manifest}: no (label-breaking, partner) pairs listed")
    dataset = EpochSeededDataset(pairs, cfg.seed + 1)
    sampler = ResumableDistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, seed=cfg.seed + 1)
    per_pass = math.ceil(sampler.num_samples / cfg.batch_size)
    epoch, step = divmod(start_step, per_pass)
    while True:
        sampler.set_position(epoch, step * cfg.batch_size)
        dataset.set_epoch(epoch)
        yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
        epoch, step = epoch + 1, 0


def _mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return float(value)


def _append_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, *, on_step: Optional[StepHook] = None) -> dict[str, float]:
    """Trains cfg's baselines (or linear probe) on the task's train split; returns the final metrics.

    Writes the run directory `cfg.out` (see the module docstring). `on_step(global_step, model)` is
    called after every optimizer step, once that step's checkpoint (if one is due) is on disk.
    """
    cfg.validate()
    if cfg.out is None:
        raise ConfigError("out: the run directory is required (--out)")
    context = _init_distributed(cfg)
    try:
        return _train(cfg, context, on_step)
    finally:
        if context.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, context: _Distributed, on_step: Optional[StepHook]) -> dict[str, float]:
    from .data import split_exists

    run, device, world_size = Path(cfg.out), context.device, context.world_size
    class_names = _class_names(cfg)
    model, preprocess = build_model(cfg, None if class_names is None else len(class_names))
    model.to(device)
    parameters = [parameter for _, parameter in model.trainable_parameters()]
    if not parameters:
        raise ValueError("train: nothing to train; set tokenization, domain_attention or adapter, or linear_probe")
    train_tf, eval_tf = _transforms(preprocess, cfg.train_augment)
    dataset = EpochSeededDataset(_train_dataset(cfg, train_tf), cfg.seed)
    sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=context.rank, seed=cfg.seed)
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr)
    breaking_loss = None
    if cfg.augment_manifest is not None:
        from .losses import MemoryBankContrastiveLoss

        breaking_loss = MemoryBankContrastiveLoss(_tower_width(model.visual), cfg.bank_batches, cfg.logit_scale)

    if context.is_main:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(run / "config.json", cfg.to_dict())
    progress = _Progress()
    if cfg.resume:
        progress = _load_checkpoint(run, model, optimizer, breaking_loss, cfg.batch_size, world_size, cfg.seed)
        if context.is_main:
            _truncate_log(run / "log.jsonl", progress.global_step)
    elif context.is_main:
        (run / "log.jsonl").unlink(missing_ok=True)
    pair_batches = None
    if breaking_loss is not None:
        pair_batches = _breaking_pair_batches(cfg, train_tf, context, progress.global_step)

    def save() -> None:
        _save_checkpoint(run, model, optimizer, breaking_loss, progress, cfg.batch_size, world_size, cfg.seed)

    forward: nn.Module = _StepForward(model)
    if world_size > 1:
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
    validate = cfg.eval_every > 0 and split_exists(cfg.task, cfg.data_root, "val")
    model.train()
    for epoch in range(progress.epoch, cfg.epochs):
        sampler.set_position(epoch, progress.step_in_epoch * cfg.batch_size)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda")
        with tqdm(loader, total=steps_per_epoch, initial=progress.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                  disable=not context.is_main, dynamic_ncols=True) as bar:
            for batch in bar:
                pairs = None if pair_batches is None else next(pair_batches)
                loss = _step_loss(forward, batch, pairs, breaking_loss, cfg, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.step_in_epoch += 1
                progress.global_step += 1
                loss_value = _mean_over_ranks(loss.detach(), world_size)
                progress.epoch_loss_sum += loss_value
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if context.is_main and cfg.log_every and progress.global_step % cfg.log_every == 0:
                    _append_log(run, {"event": "step", "epoch": epoch, "step": progress.global_step, "loss": loss_value,
                                      "lr": optimizer.param_groups[0]["lr"], "time": time.time()})
                # The epoch's last step is checkpointed by the epoch-end checkpoint below.
                if (context.is_main and cfg.checkpoint_every and progress.global_step % cfg.checkpoint_every == 0
                        and progress.step_in_epoch < steps_per_epoch):
                    save()
                if on_step is not None:
                    on_step(progress.global_step, model)
        record = {"event": "epoch", "epoch": epoch, "step": progress.global_step,
                  "loss": progress.epoch_loss_sum / max(progress.step_in_epoch, 1), "time": time.time()}
        progress = _Progress(epoch + 1, 0, progress.global_step, 0.0)
        if context.is_main:
            if validate and (epoch + 1) % cfg.eval_every == 0:
                metrics, _ = _evaluate_split(model, cfg, "val", eval_tf, device)
                record.update({f"val/{name}": value for name, value in metrics.items()})
            _append_log(run, record)
            save()
        if world_size > 1:
            dist.barrier()  # the other ranks wait for rank 0's validation and checkpoint

    metrics: dict[str, float] = {}
    if context.is_main:
        _save_tensors(run / "trainable.safetensors", model.trainable_state_dict())
        metrics, predictions = _evaluate_split(model, cfg, cfg.eval_split, eval_tf, device)
        _write_results(run, metrics, predictions)
    if world_size > 1:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    return metrics


def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """Evaluates the trained parameters of run directory `cfg.out` on `cfg.eval_split`.

    The frozen backbone is rebuilt from cfg (same weights, or the same seeded random init) and
    `trainable.safetensors` loaded into it; metrics.json and predictions.npz are (re)written.
    """
    from safetensors.torch import load_file

    cfg.validate()
    if cfg.out is None:
        raise ConfigError("out: the run directory is required")
    run = Path(cfg.out)
    path = run / "trainable.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"evaluate: no trained parameters at {path} (has `train` finished?)")
    device = torch.device(cfg.resolved_device())
    class_names = _class_names(cfg)
    model, preprocess = build_model(cfg, None if class_names is None else len(class_names))
    model.load_trainable_state_dict(load_file(str(path)))
    model.to(device)
    _, eval_tf = _transforms(preprocess, augment=False)
    metrics, predictions = _evaluate_split(model, cfg, cfg.eval_split, eval_tf, device)
    _write_results(run, metrics, predictions)
    return metrics


# --------------------------------------------------------------------------------------- dry run

BASELINES = ("tokenization", "domain_attention", "adapter")


def _vit_spec(cfg: TrainConfig, visual: Optional[nn.Module]):
    """The analytic shape (models.flops.ViTSpec) of cfg's tower: read off the built open_clip tower,
    else from the tiny constants or the open_clip config by name; None where neither applies (timm)."""
    from .models import backbone
    from .models.flops import ViTSpec, open_clip_spec

    if visual is not None:
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            return None
        width = visual.transformer.width
        # Injected blocks wrap the original, so the MLP is found by name at any depth.
        mlp_in = next(module for name, module in visual.transformer.named_modules() if name.endswith("mlp.c_fc"))
        return ViTSpec(image_size=cfg.image_size, patch_size=visual.patch_size[0], width=width,
                       layers=len(visual.transformer.resblocks), mlp_ratio=mlp_in.out_features / width,
                       embed_dim=None if visual.proj is None else visual.proj.shape[1])
    if cfg.backbone.startswith(backbone.TIMM_PREFIX):
        return None
    if cfg.tiny:
        return ViTSpec(image_size=cfg.image_size, patch_size=backbone.TINY_PATCH, width=backbone.TINY_WIDTH,
                       layers=backbone.TINY_LAYERS, embed_dim=backbone.TINY_WIDTH)
    return open_clip_spec(cfg.backbone, cfg.image_size)


def _measured_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of the built model, attributed to the baseline whose module holds them."""
    from lowres_kernels.nn import DomainAttention, SubKernelPatchEmbed

    from .models import AdaptFormer, LoRA

    owners = {"tokenization": SubKernelPatchEmbed, "domain_attention": DomainAttention, "adapter": (AdaptFormer, LoRA)}
    counted = {name: 0 for name in (*BASELINES, "head")}
    seen: set[int] = set()
    for module in model.visual.modules():
        for name, kind in owners.items():
            if isinstance(module, kind):
                for parameter in module.parameters():
                    if parameter.requires_grad and id(parameter) not in seen:
                        seen.add(id(parameter))
                        counted[name] += parameter.numel()
    counted["head"] = sum(parameter.numel() for parameter in model.head.parameters() if parameter.requires_grad)
    counted["total"] = sum(parameter.numel() for _, parameter in model.trainable_parameters())
    return counted


def dry_run_report(cfg: TrainConfig, *, build: bool = True) -> dict[str, Any]:
    """What cfg would train, without training: per baseline the trainable parameters it adds and
    the GFLOPs (multiply-adds, models.flops) of one image with it, and with all of cfg's baselines.

    `build=False` skips building the model (analytic numbers only: no weights are loaded, so it
    works for ViT-H-14 anywhere). With `build=True` the measured counts of the built model are
    added; the head is counted when the train split is there to give the number of classes.
    """
    from .data import split_exists
    from .models.flops import added_parameters, gflops_report

    cfg.validate()
    chosen = {name: getattr(cfg, name) for name in BASELINES if getattr(cfg, name) is not None}
    model, head_known = None, is_retrieval(cfg.task) or split_exists(cfg.task, cfg.data_root, "train")
    if build:
        class_names = _class_names(cfg) if head_known else None
        # Without the train split the number of classes is unknown: an (uncounted) embedding head stands in.
        model, _ = build_model(cfg, None if class_names is None else len(class_names))
    spec = _vit_spec(cfg, None if model is None else model.visual)
    measured = None if model is None else _measured_parameters(model)
    rows = []
    for name, options in [*chosen.items(), *([("all", chosen)] if len(chosen) > 1 else [])]:
        injections = options if name == "all" else {name: options}
        row: dict[str, Any] = {"baseline": name, "options": options}
        if spec is not None:
            row["parameters"] = added_parameters(spec, **injections)
            row["gflops"] = gflops_report(spec, **injections)["gflops_injected"]
        if measured is not None:
            row["measured_parameters"] = sum(measured[key] for key in (chosen if name == "all" else [name]))
        rows.append(row)
    return {
        "backbone": cfg.backbone + (" (tiny)" if cfg.tiny else ""),
        "image_size": cfg.image_size,
        "frozen_gflops": None if spec is None else gflops_report(spec)["gflops_frozen"],
        "baselines": rows,
        "head_parameters": measured["head"] if measured is not None and head_known else None,
        "trainable_parameters": measured["total"] if measured is not None and head_known else None,
    }
