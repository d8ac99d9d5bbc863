"""Evaluation of a model on one split, and `evaluate`, which re-evaluates a finished run."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data import ClassificationDataset, ClassificationSplit, ImageListDataset, load_split
from .inputs import task_class_names, transforms
from .model import build_model
from .run_directory import load_trainable, write_results

def autocast(device: torch.device, amp: bool):
    # bf16 needs no loss scaling; on CPU autocast would only slow the tiny runs down.
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()

@torch.no_grad()
def run_model(model: nn.Module, dataset, cfg: TrainConfig, device: torch.device, description: str) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers)
    outputs = []
    for batch in tqdm(loader, desc=description, leave=False, dynamic_ncols=True):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        with autocast(device, cfg.amp):
            outputs.append(model(images.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs)

def evaluate_split(model: nn.Module, cfg: TrainConfig, split_name: str, transform, device: torch.device,
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and predictions (the predictions-<split>.npz arrays) of `model` on one split."""
    from ..metrics import split_retrieval_metrics, topk_accuracy

    was_training = model.training
    model.eval()
    split = load_split(cfg.task, cfg.data_root, split_name)
    try:
        if isinstance(split, ClassificationSplit):
            logits = run_model(model, ClassificationDataset(split, transform), cfg, device, f"eval {split_name}")
            labels = torch.tensor(split.labels)
            metrics = topk_accuracy(logits, labels, (1, 5))
            return metrics, {"logits": logits.numpy(), "labels": labels.numpy(), "class_names": np.array(split.class_names)}
        queries = run_model(model, ImageListDataset(split.query_paths, transform), cfg, device, f"embed {split_name} queries")
        gallery = run_model(model, ImageListDataset(split.gallery_paths, transform), cfg, device, f"embed {split_name} gallery")
        ground_truth = torch.tensor(split.ground_truth)
        metrics = split_retrieval_metrics(queries, gallery, ground_truth, symmetric=split.symmetric)
        return metrics, {
            "query_embeddings": queries.numpy(), "gallery_embeddings": gallery.numpy(),
            "ground_truth": ground_truth.numpy(),
            "query_paths": np.array([str(path) for path in split.query_paths]),
            "gallery_paths": np.array([str(path) for path in split.gallery_paths]),
        }
    finally:
        model.train(was_training)

def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """Evaluates the trained parameters of run directory `cfg.out` on `cfg.eval_split`.

    The frozen backbone is rebuilt from cfg (same weights, or the same seeded random init) and
    `trainable.safetensors` loaded into it (refused unless it belongs to the run of config.json);
    metrics-<split>.json and predictions-<split>.npz are (re)written, other splits' left alone.
    """
    cfg.validate()
    if cfg.out is None:
        raise ConfigError("out: the run directory is required")
    run = Path(cfg.out)
    tensors, trainable = load_trainable(run)
    device = torch.device(cfg.resolved_device())
    class_names = task_class_names(cfg)
    model, preprocess = build_model(cfg, None if class_names is None else len(class_names))
    model.load_trainable_state_dict(tensors)
    model.to(device)
    _, eval_tf = transforms(preprocess, augment=False)
    metrics, predictions = evaluate_split(model, cfg, cfg.eval_split, eval_tf, device)
    write_results(run, cfg.eval_split, metrics, predictions, run_id=trainable["run_id"],
                  global_step=int(trainable["global_step"]))
    return metrics
