"""Evaluation of a model on one split, and `evaluate`, which re-evaluates a finished run."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data import ClassificationDataset, ClassificationSplit, ImageListDataset, PairDataset, RetrievalSplit, load_split
from .inputs import task_class_names, transforms
from .model import build_model
from .run_directory import load_trainable, write_results
from .selection import parameters_file

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

# The authors' release computes its retrieval validation loss on raw cosine similarities
# (repository xiaobai1217/Low-Resource-Vision, file scripts/train_map.py, val_one_step).
VALIDATION_LOGIT_SCALE = 1.0


def pair_loss(split: RetrievalSplit, queries: torch.Tensor, gallery: torch.Tensor, batch_size: int, seed: int) -> float:
    """The release's retrieval validation loss from a split's embeddings: the symmetric contrastive loss
    over one (query, gallery image) pair per gallery image (drawn as training draws epoch 0's), in
    batches of `batch_size` in gallery order, averaged over the pairs."""
    from ..losses import symmetric_contrastive_loss

    pairs = PairDataset(split, transform=None, seed=seed)
    query_row = {path: row for row, path in enumerate(split.query_paths)}
    gallery_row = {path: row for row, path in enumerate(split.gallery_paths)}
    rows = torch.tensor([[query_row[query], gallery_row[image]] for query, image in map(pairs.pair, range(len(pairs)))])
    total = 0.0
    for batch in rows.split(batch_size):
        loss = symmetric_contrastive_loss(queries[batch[:, 0]], gallery[batch[:, 1]], logit_scale=VALIDATION_LOGIT_SCALE)
        total += len(batch) * loss.item()
    return total / len(rows)


def validation_metrics(model: nn.Module, cfg: TrainConfig, transform, device: torch.device) -> dict[str, float]:
    """The metrics of the val split, and for retrieval the release's validation loss ("loss")."""
    metrics, predictions = evaluate_split(model, cfg, "val", transform, device)
    split = load_split(cfg.task, cfg.data_root, "val")
    if isinstance(split, RetrievalSplit):
        queries, gallery = (torch.from_numpy(predictions[name]) for name in ("query_embeddings", "gallery_embeddings"))
        metrics["loss"] = pair_loss(split, queries, gallery, cfg.batch_size, cfg.seed)
    return metrics


def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """Evaluates the selected trained parameters of run directory `cfg.out` on `cfg.eval_split`.

    The frozen backbone is rebuilt from cfg (same weights, or the same seeded random init) and the
    parameters `train` selected loaded into it (`best.safetensors` with select="best",
    `trainable.safetensors` with "last"; refused unless they belong to the run of config.json);
    metrics-<split>.json and predictions-<split>.npz are (re)written, other splits' left alone.
    """
    cfg.validate()
    if cfg.out is None:
        raise ConfigError("out: the run directory is required")
    run = Path(cfg.out)
    parameters = parameters_file(cfg)
    tensors, trainable = load_trainable(run, parameters)
    device = torch.device(cfg.resolved_device())
    class_names = task_class_names(cfg)
    model, preprocess = build_model(cfg, None if class_names is None else len(class_names))
    model.load_trainable_state_dict(tensors)
    model.to(device)
    _, eval_tf = transforms(preprocess, augment=False)
    metrics, predictions = evaluate_split(model, cfg, cfg.eval_split, eval_tf, device)
    write_results(run, cfg.eval_split, metrics, predictions, run_id=trainable["run_id"],
                  global_step=int(trainable["global_step"]), parameters=parameters,
                  selection=json.loads(trainable["selection"]) if "selection" in trainable else None)
    return metrics
