"""Evaluation metrics of the LITE benchmark: Top-k accuracy and retrieval ranks."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F

RECALL_KS = (1, 5, 10, 50)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """{"top1": ..., "top5": ...} in percent: how often the label is among the k highest logits.

    With fewer classes than k every prediction counts as correct (k is clamped to the class count).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(f"topk_accuracy: expected logits [n>0, classes] and labels [n], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels.view(-1, 1).to(ranked.device)
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's ground-truth gallery item, by dot product of L2-normalised embeddings.

    queries [n, D], gallery [m, D], ground_truth [n] (gallery index per query) -> ranks [n] (int64).
    Ties count in the query's favour: rank = 1 + number of gallery items scoring strictly higher.
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"retrieval_ranks: expected queries [n, D] and gallery [m, D], got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if ground_truth.shape != queries.shape[:1]:
        raise ValueError(f"retrieval_ranks: ground_truth must have shape [{queries.shape[0]}], got {tuple(ground_truth.shape)}")
    if ground_truth.numel() and not (0 <= int(ground_truth.min()) and int(ground_truth.max()) < gallery.shape[0]):
        raise ValueError(f"retrieval_ranks: ground_truth indices must lie in [0, {gallery.shape[0]}), got range "
                         f"[{int(ground_truth.min())}, {int(ground_truth.max())}]")
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).t()
    target = similarity.gather(1, ground_truth.view(-1, 1).long().to(similarity.device))
    return 1 + (similarity > target).sum(dim=1)


def retrieval_metrics(ranks: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """{"R@1", "R@5", "R@10", "R@50"} in percent, "mean_rank" and "median_rank" from 1-based ranks.

    The median of an even count is the mean of the two middle ranks.
    """
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"retrieval_metrics: expected a non-empty 1-d tensor of ranks, got shape {tuple(ranks.shape)}")
    ranks = ranks.double()
    metrics = {f"R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    ordered = ranks.sort().values
    middle = (ordered.numel() - 1) // 2
    median = ordered[middle] if ordered.numel() % 2 else 0.5 * (ordered[middle] + ordered[middle + 1])
    metrics.update(mean_rank=ranks.mean().item(), median_rank=median.item())
    return metrics


def average_metrics(*results: Mapping[str, float]) -> Dict[str, float]:
    """Key-wise mean of metric dicts with the same keys (e.g. the a->b and b->a directions)."""
    if not results or any(set(r) != set(results[0]) for r in results):
        raise ValueError(f"average_metrics: need one or more dicts with the same keys, got {[sorted(r) for r in results]}")
    return {key: sum(r[key] for r in results) / len(results) for key in results[0]}


def split_retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor, ground_truth: torch.Tensor, *,
                            symmetric: bool, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """The metrics of a retrieval split: query -> gallery, and for a `symmetric` split (one query per
    gallery image) also gallery -> query, each metric then the mean of the two directions, with both
    directions also reported under "query_to_gallery/..." and "gallery_to_query/...".
    """
    forward = retrieval_metrics(retrieval_ranks(queries, gallery, ground_truth), ks)
    if not symmetric:
        return forward
    # One query per gallery image: the inverse permutation is the ground truth of the reverse direction.
    backward = retrieval_metrics(retrieval_ranks(gallery, queries, ground_truth.argsort()), ks)
    return {
        **average_metrics(forward, backward),
        **{f"query_to_gallery/{name}": value for name, value in forward.items()},
        **{f"gallery_to_query/{name}": value for name, value in backward.items()},
    }


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] int64 counts, rows = true label, columns = predicted class.

    `predictions` are class indices [n] or logits [n, num_classes] (argmax is taken).
    """
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if predictions.shape != labels.shape or predictions.dim() != 1:
        raise ValueError(f"confusion_matrix: expected predictions [n] (or logits [n, K]) and labels [n], got {tuple(predictions.shape)} and {tuple(labels.shape)}")
    for name, values in (("predictions", predictions), ("labels", labels)):
        if values.numel() and not (0 <= int(values.min()) and int(values.max()) < num_classes):
            raise ValueError(f"confusion_matrix: {name} must lie in [0, {num_classes}), got range [{int(values.min())}, {int(values.max())}]")
    flat = labels.long() * num_classes + predictions.long().to(labels.device)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)
