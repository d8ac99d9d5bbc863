"""PNG figures of an augmentation run: example images per kind, and GeNIe-Ada's distance curves."""

from __future__ import annotations

from pathlib import Path

from ..data import load_image
from .cache import KINDS, read_manifest


def plot_examples(manifest_path: Path | str, out_path: Path | str, *, max_sources: int = 4) -> Path:
    """A grid: one row per source (the first `max_sources`), the source then the first image of each kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest_path = Path(manifest_path)
    entries = read_manifest(manifest_path)
    by_source: dict[str, dict[str, dict]] = {}
    for entry in entries:
        by_source.setdefault(entry["source"], {}).setdefault(entry["kind"], entry)
    kinds = [kind for kind in KINDS if any(kind in kinds_of for kinds_of in by_source.values())]
    rows = list(by_source.items())[:max_sources]
    figure, axes = plt.subplots(max(len(rows), 1), 1 + len(kinds), figsize=(2.2 * (1 + len(kinds)), 2.2 * max(len(rows), 1)),
                                squeeze=False)
    for row, (source, kinds_of) in enumerate(rows):
        panels = [("source", load_image(source))]
        for kind in kinds:
            entry = kinds_of.get(kind)
            panels.append((kind, load_image(manifest_path.parent / entry["path"]) if entry else None))
        for column, (title, image) in enumerate(panels):
            axis = axes[row][column]
            axis.axis("off")
            if image is not None:
                axis.imshow(image)
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return Path(out_path)


def plot_genie_ada(manifest_path: Path | str, out_path: Path | str, *, max_curves: int = 12) -> Path | None:
    """Projected distance over the noise ratio for GeNIe-Ada entries, the chosen ratio marked; None if there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [entry for entry in read_manifest(manifest_path) if entry.get("adaptive")][:max_curves]
    if not entries:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for entry in entries:
        (line,) = axis.plot(entry["ratios"], entry["distances"], marker="o", alpha=0.7)
        chosen = entry["ratios"].index(entry["noise_ratio"])
        axis.scatter([entry["noise_ratio"]], [entry["distances"][chosen]], s=80, facecolors="none",
                     edgecolors=line.get_color())
    axis.set_xlabel("noise ratio r")
    axis.set_ylabel("projected distance to the target class")
    axis.set_title("GeNIe-Ada: chosen r (circled) follows the largest jump", fontsize=9)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return Path(out_path)
