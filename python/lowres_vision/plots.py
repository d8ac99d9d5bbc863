"""Figures of a run directory: learned domain-attention maps, sub-kernel weights, confusion matrix,
training curves and top-5 retrieval examples; `plot_run(run)` writes every one that applies.

Matplotlib is used through its object API with the Agg canvas, so importing this module never
changes the caller's pyplot backend and works without a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PathLike = str | os.PathLike

# Metrics drawn in the training-curve panel (all in percent); mean/median ranks have another scale.
_PERCENT_METRICS = ("top1", "top5", "R@1", "R@5", "R@10")


def _save(figure: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _as_numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def plot_domain_attention_maps(maps, mix_logits=None, path: PathLike = "domain_attention_maps.png", *, title: str = "") -> Path:
    """The C learned global maps [C, 2h, 2h] as a grid of heatmaps, each titled with its softmax(r) weight."""
    maps = _as_numpy(maps)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be [C, 2h, 2h], got shape {tuple(maps.shape)}")
    count = maps.shape[0]
    weights = None
    if mix_logits is not None:
        mix_logits = _as_numpy(mix_logits)
        if mix_logits.shape != (count,):
            raise ValueError(f"mix_logits must be [C] = [{count}] to match maps {tuple(maps.shape)}, got {tuple(mix_logits.shape)}")
        weights = _softmax(mix_logits)
    columns = min(count, 5)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.2 * columns, 2.3 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for c, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if c >= count:
            continue
        image = ax.imshow(maps[c], cmap="viridis", interpolation="nearest")
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        ax.set_title(f"map {c}" + (f"  w={weights[c]:.2f}" if weights is not None else ""), fontsize=9)
    figure.suptitle(title or f"Learned domain-attention maps (C={count}, {maps.shape[1]}x{maps.shape[2]})", fontsize=11)
    return _save(figure, path)


def plot_subkernel_weights(weights, path: PathLike = "subkernel_weights.png", *, title: str = "") -> Path:
    """Sub-kernel weights as an n x n heatmap: an [n, n] grid of softmax weights, or the [T] logits."""
    weights = _as_numpy(weights)
    if weights.ndim == 1:
        n = math.isqrt(weights.size)
        if n * n != weights.size:
            raise ValueError(f"subkernel logits must have a square number of entries T = n*n, got T={weights.size}")
        weights = _softmax(weights).reshape(n, n)
    elif weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"subkernel weights must be [T] logits or an [n, n] grid, got shape {tuple(weights.shape)}")
    n = weights.shape[0]
    figure = Figure(figsize=(4.2, 3.6))
    ax = figure.subplots()
    image = ax.imshow(weights, cmap="magma", interpolation="nearest")
    figure.colorbar(image, ax=ax, label="softmax weight")
    if n <= 8:
        mid = (weights.max() + weights.min()) / 2
        for a in range(n):
            for b in range(n):
                ax.text(b, a, f"{100 * weights[a, b]:.1f}%", ha="center", va="center", fontsize=7,
                        color="black" if weights[a, b] > mid else "white")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("sub-kernel column offset b")
    ax.set_ylabel("sub-kernel row offset a")
    ax.set_title(title or f"Learned sub-kernel weights ({n}x{n}, % shown)", fontsize=10)
    return _save(figure, path)


def confusion_matrix(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    predictions, labels = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must have the same shape")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion_matrix(logits, labels, class_names: Sequence[str], path: PathLike = "confusion_matrix.png", *, title: str = "") -> Path:
    """Row-normalised confusion matrix from logits [n, classes] and labels [n]; empty rows stay blank."""
    logits, labels = _as_numpy(logits), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != len(class_names):
        raise ValueError(
            f"logits must be [n, classes] with n = len(labels) and classes = len(class_names); got logits "
            f"{tuple(logits.shape)}, labels {tuple(labels.shape)}, {len(class_names)} class names"
        )
    counts = confusion_matrix(logits.argmax(1), labels, len(class_names))
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts / totals, np.nan)
    size = max(4.5, 0.28 * len(class_names) + 2)
    figure = Figure(figsize=(size + 1, size))
    ax = figure.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels=class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = 100 * np.trace(counts) / max(1, counts.sum())
    ax.set_title(title or f"Confusion matrix (top-1 {accuracy:.1f}%, n={counts.sum()})", fontsize=10)
    return _save(figure, path)


def read_log(path: PathLike) -> list[dict]:
    from .training.run_directory import read_log

    return read_log(Path(path))


def plot_training_curves(records: Sequence[Mapping] | PathLike, path: PathLike = "training_curves.png", *, title: str = "") -> Path:
    """Loss per step (and per-epoch mean) and the evaluated percent metrics per epoch, from log.jsonl records."""
    if isinstance(records, (str, os.PathLike)):
        records = read_log(records)
    steps = [r for r in records if r.get("event", "step") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("event") == "epoch"]
    metric_names = sorted({k for r in records for k in r if "/" in k and k.split("/")[-1] in _PERCENT_METRICS})
    if not steps and not epochs:
        raise ValueError("plot_training_curves: the log has no records with a loss")
    figure = Figure(figsize=(10 if metric_names else 5.5, 3.6))
    axes = figure.subplots(1, 2 if metric_names else 1, squeeze=False)[0]
    ax = axes[0]
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="step loss")
    epoch_losses = [r for r in epochs if "loss" in r and "step" in r]
    if epoch_losses:
        ax.plot([r["step"] for r in epoch_losses], [r["loss"] for r in epoch_losses], "o-", lw=1.5, label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if metric_names:
        ax = axes[1]
        for name in metric_names:
            points = [(r["epoch"], r[name]) for r in records if name in r and "epoch" in r]
            ax.plot(*zip(*points), "o-", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title or "Training curves", fontsize=11)
    return _save(figure, path)


def _thumbnail(path: str, size: int = 128) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    except OSError:  # the run directory moved away from its data: draw a blank tile, still mark the ranks
        return np.full((size, size, 3), 230, dtype=np.uint8)


def plot_retrieval_examples(
    query_embeddings, gallery_embeddings, ground_truth, query_paths: Sequence[str], gallery_paths: Sequence[str],
    path: PathLike = "retrieval_examples.png", *, num_queries: int = 4, k: int = 5, title: str = "",
) -> Path:
    """Rows of query + its top-k gallery images (cosine similarity); the ground truth is framed green,
    other results red, and the ground truth's rank is given when it is not in the top k."""
    queries, gallery = _as_numpy(query_embeddings), _as_numpy(gallery_embeddings)
    ground_truth = np.asarray(ground_truth, dtype=np.int64)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"embeddings must be [n, d] and [m, d], got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if ground_truth.shape != (queries.shape[0],) or len(query_paths) != queries.shape[0] or len(gallery_paths) != gallery.shape[0]:
        raise ValueError(
            f"ground_truth {tuple(ground_truth.shape)} and query_paths ({len(query_paths)}) must have one entry per query "
            f"({queries.shape[0]}); gallery_paths ({len(gallery_paths)}) one per gallery embedding ({gallery.shape[0]})"
        )
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True).clip(1e-12)
    similarity = queries @ gallery.T
    order = np.argsort(-similarity, axis=1, kind="stable")
    ranks = 1 + np.argmax(order == ground_truth[:, None], axis=1)
    k = min(k, gallery.shape[0])
    # Show the best and the worst retrieved queries: successes and failures side by side.
    by_rank = np.argsort(ranks, kind="stable")
    count = min(num_queries, len(by_rank))
    shown = list(by_rank[: (count + 1) // 2]) + list(by_rank[len(by_rank) - count // 2:])
    figure = Figure(figsize=(1.6 * (k + 1), 1.75 * len(shown) + 0.4))
    axes = figure.subplots(len(shown), k + 1, squeeze=False)
    for row, q in enumerate(shown):
        axes[row, 0].imshow(_thumbnail(query_paths[q]))
        axes[row, 0].set_title(f"query {q}\nGT rank {ranks[q]}", fontsize=7)
        for col in range(k):
            g = order[q, col]
            ax = axes[row, col + 1]
            ax.imshow(_thumbnail(gallery_paths[g]))
            hit = g == ground_truth[q]
            ax.set_title(f"#{col + 1}  {similarity[q, g]:.2f}" + ("  GT" if hit else ""), fontsize=7, color="green" if hit else "black")
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if hit else "red")
                spine.set_linewidth(3 if hit else 1)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(title or f"Top-{k} retrieval (best and worst queries; R@1 {100 * np.mean(ranks == 1):.1f}%)", fontsize=10)
    return _save(figure, path)


def plot_results(results: Mapping[str, Mapping[str, Mapping[str, float]]], path: PathLike = "results.png", *, title: str = "",
                 errors: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]] = None,
                 reference: Optional[Mapping[str, Mapping[str, float]]] = None) -> Path:
    """Grouped bars: for each task metric (columns of the paper's table), one bar per configuration.

    results[configuration][task][metric] = value; `errors`, in the same layout, draws error bars
    (e.g. the standard deviation over seeds); reference[task][metric] draws a dashed line (e.g. chance).
    """
    configurations = list(results)
    columns = [(task, metric) for task, metrics in next(iter(results.values())).items() for metric in metrics]
    figure = Figure(figsize=(2.0 * len(columns) + 1.5, 3.6))
    axes = figure.subplots(1, len(columns), squeeze=False, gridspec_kw={"wspace": 0.55})[0]
    colours = [f"C{i}" for i in range(len(configurations))]
    legend_handles = None
    for ax, (task, metric) in zip(axes, columns):
        values = [results[c].get(task, {}).get(metric, np.nan) for c in configurations]
        spread = None if errors is None else [errors.get(c, {}).get(task, {}).get(metric, 0.0) for c in configurations]
        bars = ax.bar(range(len(configurations)), values, color=colours, yerr=spread, capsize=2)
        level = (reference or {}).get(task, {}).get(metric)
        if level is not None:
            ax.axhline(level, color="black", linestyle="--", linewidth=0.8, label="chance")
        legend_handles = legend_handles or list(bars)
        ax.set_title(f"{task}\n{metric}" + (" (lower better)" if "rank" in metric else ""), fontsize=8)
        ax.set_xticks([])
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    figure.legend(legend_handles, configurations, loc="lower center", ncol=min(len(configurations), 5), fontsize=8,
                  bbox_to_anchor=(0.5, -0.08))
    figure.suptitle(title or "Results", fontsize=11, y=1.06)
    return _save(figure, path)


def _load_trainable(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def plot_run(run: PathLike, out: Optional[PathLike] = None) -> list[Path]:
    """Every plot that the files of run directory `run` allow, written to `out` (default run/plots)."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    if (run / "config.json").is_file():  # a training run: its figures must all come from that run
        from .training.run_directory import check_run_files

        check_run_files(run)
    out = Path(out) if out is not None else run / "plots"
    written: list[Path] = []
    trainable_path = run / "trainable.safetensors"
    if trainable_path.is_file():
        tensors = _load_trainable(trainable_path)
        for name, value in sorted(tensors.items()):
            prefix = name.rsplit(".", 1)[0]
            stem = prefix.replace(".", "_")
            if name.endswith("domain_attention.maps") and value.ndim == 3:
                written.append(plot_domain_attention_maps(value, tensors.get(prefix + ".mix_logits"),
                                                          out / f"domain_attention_maps_{stem}.png", title=f"{prefix}: learned maps"))
            elif name.endswith(".logits") and value.ndim == 1 and math.isqrt(value.size) ** 2 == value.size and value.size > 1:
                written.append(plot_subkernel_weights(value, out / f"subkernel_weights_{stem}.png", title=f"{prefix}: sub-kernel weights"))
    log_path = run / "log.jsonl"
    # A logistic-regression probe is fitted, not trained: its log holds no loss to draw.
    if log_path.is_file() and any("loss" in record for record in read_log(log_path)):
        written.append(plot_training_curves(log_path, out / "training_curves.png"))
    for predictions_path in sorted(run.glob("predictions-*.npz")):  # one per evaluated split
        split = predictions_path.stem.removeprefix("predictions-")
        with np.load(predictions_path, allow_pickle=False) as predictions:
            if "logits" in predictions:
                written.append(plot_confusion_matrix(predictions["logits"], predictions["labels"],
                                                     [str(c) for c in predictions["class_names"]],
                                                     out / f"confusion_matrix_{split}.png"))
            elif "query_embeddings" in predictions:
                written.append(plot_retrieval_examples(
                    predictions["query_embeddings"], predictions["gallery_embeddings"], predictions["ground_truth"],
                    [str(p) for p in predictions["query_paths"]], [str(p) for p in predictions["gallery_paths"]],
                    out / f"retrieval_examples_{split}.png",
                ))
    return written
