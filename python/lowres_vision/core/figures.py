"""Figures of CoRE runs: the captions retrieved for a few images, and the α × β tuning grid."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_retrieved_captions(
    image_paths: Sequence[Path],
    caption_lists: Sequence[Sequence[tuple[str, float]]],
    path: Path | str,
    *,
    titles: Sequence[str] | None = None,
    max_captions: int = 5,
) -> Path:
    """One row per image: the image, then its top retrieved captions with their cosine scores."""
    from lowres_vision.data import load_image

    if len(image_paths) != len(caption_lists) or not image_paths:
        raise ValueError(f"plot_retrieved_captions: {len(image_paths)} images but {len(caption_lists)} caption lists")
    plt = _pyplot()
    rows = len(image_paths)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), gridspec_kw={"width_ratios": [1, 3]}, squeeze=False)
    for row, (image_path, captions) in enumerate(zip(image_paths, caption_lists)):
        image_axis, text_axis = axes[row]
        image_axis.imshow(load_image(image_path))
        image_axis.set_title(titles[row] if titles else Path(image_path).name, fontsize=8)
        lines = [textwrap.shorten(f"{score:.3f}  {caption}", width=95) for caption, score in captions[:max_captions]]
        text_axis.text(0.0, 1.0, "\n".join(lines) or "(no caption retrieved)", va="top", ha="left", fontsize=9, family="monospace")
        for axis in (image_axis, text_axis):
            axis.axis("off")
    figure.suptitle("Captions retrieved for each image (cosine score, best first)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def plot_tuning_grid(alphas: Sequence[float], betas: Sequence[float], accuracy: np.ndarray, path: Path | str, *, metric: str = "top-1 (%)") -> Path:
    """Heat map of the tuning metric over α (rows) × β (columns), as Fig. 3 of the CoRE paper (arXiv:2411.00988)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    image = axis.imshow(accuracy, origin="lower", cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(betas)), [f"{beta:g}" for beta in betas])
    axis.set_yticks(range(len(alphas)), [f"{alpha:g}" for alpha in alphas])
    axis.set_xlabel("β (image branch)")
    axis.set_ylabel("α (class branch)")
    figure.colorbar(image, ax=axis, label=metric)
    axis.set_title(f"CoRE tuning on the training split: {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
