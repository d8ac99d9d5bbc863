"""`train`: the training loop, one optimizer step at a time, checkpointed and resumable."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..errors import InputError
from ..data import EpochSeededDataset, is_retrieval
from .distributed import Distributed, ResumableDistributedSampler, init_distributed, reduce_step
from .evaluation import autocast, evaluate_split, validation_metrics
from .inputs import BatchMixing, breaking_pair_batches, check_splits, sample_kinds, task_class_names, train_dataset, transforms
from .model import build_model, tower_width
from .selection import BestEpoch, parameters_file, selection_criterion, selects_best
from .run_directory import (SAMPLE_KINDS, Progress, append_log, check_new_run_directory, check_resume, load_checkpoint,
                            new_run_id, remove_run_files, save_checkpoint, save_trainable, truncate_log, write_results,
                            write_run_config)

StepHook = Callable[[int, nn.Module], None]  # (global step, the model being trained)


class NonFiniteLossError(InputError):
    """A step's loss is NaN or infinite (with on_nonfinite="stop"): usually a too-large lr."""

class StepForward(nn.Module):
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

def step_loss(forward: nn.Module, batch, pairs, breaking_loss: Optional[nn.Module], cfg: TrainConfig,
               device: torch.device) -> torch.Tensor:
    """Task loss (+ breaking_loss_weight x the label-breaking contrastive loss when `pairs` is given)."""
    from ..losses import symmetric_contrastive_loss, weighted_cross_entropy

    if is_retrieval(cfg.task):
        # Both sides of every pair go through the shared backbone.
        queries, gallery, *weights = batch
        images, labels = torch.cat([queries, gallery]), None
    else:
        images, labels, *weights = batch
    weights = weights[0].to(device, torch.float32) if weights else None
    num_task = len(images)
    if pairs is not None:
        images = torch.cat([images, *pairs])
    with autocast(device, cfg.amp):
        outputs, features = forward(images.to(device, non_blocking=True), num_task)
    outputs, features = outputs.float(), features.float()
    if labels is None:
        queries, gallery = outputs.split(num_task // 2)
        loss = symmetric_contrastive_loss(queries, gallery, logit_scale=cfg.logit_scale, weights=weights)
    else:
        loss = weighted_cross_entropy(outputs, labels.to(device), weights)
    if pairs is not None:
        breaking, partners = features.split(len(pairs[0]))
        loss = loss + cfg.breaking_loss_weight * breaking_loss(breaking, partners)
    return loss

def train(cfg: TrainConfig, *, on_step: Optional[StepHook] = None) -> dict[str, float]:
    """Trains cfg's baselines (or linear probe) on the task's train split; returns the final metrics.

    Writes the run directory `cfg.out` (see the module docstring). `on_step(global_step, model)` is
    called after every optimizer step, once that step's checkpoint (if one is due) is on disk.
    """
    cfg.validate()
    if cfg.out is None:
        raise ConfigError("out: the run directory is required (--out)")
    context = init_distributed(cfg)
    try:
        return _train(cfg, context, on_step)
    finally:
        if context.owns_group:
            dist.destroy_process_group()

def _train(cfg: TrainConfig, context: Distributed, on_step: Optional[StepHook]) -> dict[str, float]:
    from ..data import split_exists

    run = Path(cfg.out)
    # Whose directory `out` is, before anything is built or written: a resume continues the run
    # there with its own settings; a new run gets an id and may only replace a run with overwrite.
    if cfg.resume:
        run_id, changes = check_resume(cfg)
    else:
        run_id, changes = new_run_id(), {}
        replaced = check_new_run_directory(run, cfg.overwrite) if context.is_main else []
    validate = cfg.eval_every > 0 and split_exists(cfg.task, cfg.data_root, "val")
    check_splits(cfg, ("train", cfg.eval_split, *(["val"] if validate else [])))
    state = _TrainingRun(cfg, context, run, run_id, validate, on_step)
    if cfg.resume:  # everything is checked before the first write: a refused resume changes no file
        state.progress = load_checkpoint(run, run_id, state.model, state.optimizer, state.breaking_loss, cfg.batch_size,
                                         context.world_size, cfg.seed, state.best)
        state.saved_step = state.progress.global_step
        if (state.progress.epoch, state.progress.step_in_epoch) > (cfg.epochs, 0):
            raise ConfigError(f"resume: epochs={cfg.epochs}, but the checkpoint in {run} is past it (epoch "
                              f"{state.progress.epoch + 1}, step {state.progress.step_in_epoch} of it); a run may only get longer")
    if context.is_main:
        if cfg.resume:
            truncate_log(run / "log.jsonl", state.progress.global_step)
        else:
            remove_run_files(replaced)
            run.mkdir(parents=True, exist_ok=True)
        write_run_config(run, run_id, cfg)
        append_log(run, {"event": "resume" if cfg.resume else "run", "run_id": run_id, "step": state.progress.global_step,
                         **({"changed": changes} if cfg.resume else {}), "time": time.time()})
    return state.run()


class _TrainingRun:
    """One run's model, optimizer, data and progress, and the loop over its epochs and steps."""

    def __init__(self, cfg: TrainConfig, context: Distributed, run: Path, run_id: str, validate: bool,
                 on_step: Optional[StepHook]) -> None:
        self.cfg, self.context, self.run_dir, self.run_id, self.validate, self.on_step = cfg, context, run, run_id, validate, on_step
        self.progress, self.saved_step = Progress(), None
        class_names = task_class_names(cfg)
        num_classes = None if class_names is None else len(class_names)
        self.model, preprocess = build_model(cfg, num_classes)
        self.model.to(context.device)
        parameters = [parameter for _, parameter in self.model.trainable_parameters()]
        if not parameters:
            raise ConfigError("train: nothing to train; set tokenization, domain_attention or adapter, or linear_probe")
        self.train_tf, self.eval_tf = transforms(preprocess, cfg.train_augment, cfg.random_erasing)
        self.mixing = BatchMixing.from_config(cfg, num_classes)
        self.train_set = train_dataset(cfg, self.train_tf)
        self.dataset = EpochSeededDataset(self.train_set, cfg.seed)
        self.sampler = ResumableDistributedSampler(self.dataset, num_replicas=context.world_size, rank=context.rank,
                                                   seed=cfg.seed)
        self.optimizer = torch.optim.Adam(parameters, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                          weight_decay=cfg.weight_decay)
        self.breaking_loss = None
        if cfg.augment_manifest is not None:
            from ..losses import MemoryBankContrastiveLoss

            self.breaking_loss = MemoryBankContrastiveLoss(tower_width(self.model.visual), cfg.bank_size, cfg.logit_scale)
        self.best = None
        if selects_best(cfg):
            if not validate:
                raise ConfigError(f"select: 'best' picks an epoch on the validation split, and task {cfg.task!r} has no "
                                  f"val split under {cfg.data_root}; use select='last'")
            self.best = BestEpoch(selection_criterion(cfg.task, cfg.select_by))

    def save(self) -> None:
        self.saved_step = self.progress.global_step
        save_checkpoint(self.run_dir, self.run_id, self.model, self.optimizer, self.breaking_loss, self.progress,
                        self.cfg.batch_size, self.context.world_size, self.cfg.seed, self.best)

    def run(self) -> dict[str, float]:
        cfg, context = self.cfg, self.context
        self.pair_batches = None
        if self.breaking_loss is not None:
            self.pair_batches = breaking_pair_batches(cfg, self.train_tf, context, self.progress.global_step)
        self.forward: nn.Module = StepForward(self.model)
        if context.world_size > 1:
            device = context.device
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[device.index] if device.type == "cuda" else None)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / cfg.batch_size)
        self.epochs = cfg.epochs
        if cfg.linear_probe == "logreg":  # the release's probe is fitted once, on frozen features: no epochs
            from .linear_probe import fit_linear_probe

            fitted = fit_linear_probe(self.model, cfg, self.eval_tf, context.device)
            if context.is_main:
                append_log(self.run_dir, {"event": "fit", "linear_probe": "logreg", **fitted, "time": time.time()})
            self.epochs = 0
        self.model.train()
        for epoch in range(self.progress.epoch, self.epochs):
            self.train_epoch(epoch)
            self.end_epoch(epoch)
        return self.finish()

    def train_epoch(self, epoch: int) -> None:
        cfg, context, progress = self.cfg, self.context, self.progress
        self.sampler.set_position(epoch, progress.step_in_epoch * cfg.batch_size)
        self.dataset.set_epoch(epoch)
        kinds = sample_kinds(self.train_set, list(self.sampler))  # of this rank's samples, in the loader's order
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
                            pin_memory=context.device.type == "cuda")
        with tqdm(loader, total=self.steps_per_epoch, initial=progress.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                  disable=not context.is_main, dynamic_ncols=True) as bar:
            for batch_index, batch in enumerate(bar):
                if self.mixing is not None:
                    batch = self.mixing(batch, progress.global_step, context.rank)
                pairs = None if self.pair_batches is None else next(self.pair_batches)
                seen = kinds[batch_index * cfg.batch_size:(batch_index + 1) * cfg.batch_size]
                counts = [seen.count(kind) for kind in SAMPLE_KINDS[:-1]] + [0 if pairs is None else len(pairs[0])]
                loss_value = self.step(batch, pairs, counts)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                self.log_step(epoch, loss_value)
                # The epoch's last step is checkpointed by the epoch-end checkpoint.
                if (context.is_main and cfg.checkpoint_every and progress.global_step % cfg.checkpoint_every == 0
                        and progress.step_in_epoch < self.steps_per_epoch):
                    self.save()
                if self.on_step is not None:
                    self.on_step(progress.global_step, self.model)

    def step(self, batch, pairs, counts: list[int]) -> float:
        """One optimizer step (none when the loss is not finite and on_nonfinite="skip"); counts this rank's
        samples per kind (`counts`, in SAMPLE_KINDS order) over all ranks; returns the loss."""
        cfg, progress = self.cfg, self.progress
        loss = step_loss(self.forward, batch, pairs, self.breaking_loss, cfg, self.context.device)
        loss_value, totals = reduce_step(loss, counts, self.context.world_size)
        for kind, count in zip(SAMPLE_KINDS, totals):
            progress.epoch_samples[kind] += count
        finite = math.isfinite(loss_value)
        if not finite and cfg.on_nonfinite == "stop":
            kept = "no checkpoint yet" if self.saved_step is None else f"checkpoint of step {self.saved_step} kept"
            raise NonFiniteLossError(
                f"step {progress.global_step + 1}: the loss is {loss_value}; the run stopped ({kept}); "
                f"lower lr, or resume with --on-nonfinite skip to drop such steps' updates")
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            loss.backward()
            self.optimizer.step()
            progress.epoch_loss_sum += loss_value
        else:
            progress.epoch_skipped += 1
        progress.step_in_epoch += 1
        progress.global_step += 1
        return loss_value

    def log_step(self, epoch: int, loss_value: float) -> None:
        if not self.context.is_main:
            return
        step = self.progress.global_step
        if not math.isfinite(loss_value):
            append_log(self.run_dir, {"event": "skipped", "epoch": epoch, "step": step, "loss": str(loss_value),
                                      "time": time.time()})
        elif self.cfg.log_every and step % self.cfg.log_every == 0:
            append_log(self.run_dir, {"event": "step", "epoch": epoch, "step": step, "loss": loss_value,
                                      "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()})

    def end_epoch(self, epoch: int) -> None:
        """Logs the epoch (validating it when due), checkpoints it, and starts the next one's progress."""
        cfg, progress = self.cfg, self.progress
        counted = progress.step_in_epoch - progress.epoch_skipped  # the mean is over the steps that updated
        record = {"event": "epoch", "epoch": epoch, "step": progress.global_step,
                  "loss": progress.epoch_loss_sum / max(counted, 1), "samples": progress.epoch_samples,
                  **({"skipped": progress.epoch_skipped} if progress.epoch_skipped else {}), "time": time.time()}
        self.progress = Progress(epoch + 1, 0, progress.global_step)
        if self.context.is_main:
            # With select="best" the last epoch is always validated, so that there is a best epoch.
            best = self.best
            if self.validate and ((epoch + 1) % cfg.eval_every == 0 or (best is not None and epoch + 1 == self.epochs)):
                metrics = validation_metrics(self.model, cfg, self.eval_tf, self.context.device)
                record.update({f"val/{name}": value for name, value in metrics.items()})
                if best is not None and best.consider(epoch, self.progress.global_step, metrics, self.model):
                    record["best"] = True
            append_log(self.run_dir, record)
            self.save()
        if self.context.world_size > 1:
            dist.barrier()  # the other ranks wait for rank 0's validation and checkpoint

    def finish(self) -> dict[str, float]:
        """Saves the trained parameters and evaluates them (the best epoch's with select="best"); returns the metrics."""
        cfg, run = self.cfg, self.run_dir
        metrics: dict[str, float] = {}
        if self.context.is_main:
            save_trainable(run, self.run_id, self.model.trainable_state_dict(), self.progress.global_step)
            step, selection = self.progress.global_step, None
            if self.best is not None:
                step, selection = self.best.step, self.best.record()
                save_trainable(run, self.run_id, self.best.parameters, step, name="best.safetensors", selection=selection)
                self.model.load_trainable_state_dict(self.best.parameters)
            metrics, predictions = evaluate_split(self.model, cfg, cfg.eval_split, self.eval_tf, self.context.device)
            write_results(run, cfg.eval_split, metrics, predictions, run_id=self.run_id, global_step=step,
                          parameters=parameters_file(cfg), selection=selection)
        if self.context.world_size > 1:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        return metrics
