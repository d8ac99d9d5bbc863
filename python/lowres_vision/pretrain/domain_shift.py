"""How far a checkpoint's frozen image embedding is invariant to the synthetic benchmark's domain shifts.

Each of `count` generated cities (parts) is rendered twice per domain with fresh seeds, and the
cosine of the frozen output embeddings retrieves each rendering's partner among all `count`
(R@5; chance 5 / count). Retrieval within one domain says whether the content (a city's layout, a
part's shape) is in the features at all; across map styles and across domains says whether it
survives the change of rendering, which is what the retrieval tasks need. Two model-free rows
retrieve the cross-domain pairs by their detail layout alone (`detail_layout`: where the image
has edges, on an 8 x 8 lattice), the share of each task that a purely spatial feature solves; and
one row asks whether the embedding knows where things are at all: a shape at one of nine places
finds, among nine images of another shape in another colour, the one at the same place (top-1,
chance 1/9). A minute on CPU, so a pretraining experiment can be judged before any demo run:

    python -m lowres_vision.pretrain.domain_shift --checkpoint OUT/open_clip_model.safetensors
"""

from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..data import eval_transform
from ..metrics import retrieval_metrics, retrieval_ranks
from ..models.backbone import SHIPPED_CHECKPOINT, build_backbone
from ..synth import drawings, maps
from .corpus import COLOURS, SHAPES, draw_shape

LAYOUT_GRID = 8
# The place probe: shapes at the centres of a 3 x 3 grid of cells, drawn at twice the size and reduced.
PLACE_TRIALS = 40
PLACE_ROW = "same place, other shape and colour"


def _recall_at_5(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """R@5 of query i retrieving gallery item i, with the evaluation's own ranking."""
    partners = torch.arange(queries.shape[0])
    return retrieval_metrics(retrieval_ranks(queries, gallery, partners), ks=(5,))["R@5"]


def detail_layout(images: torch.Tensor, grid: int = LAYOUT_GRID) -> torch.Tensor:
    """Where images [B, C, H, W] have detail: the mean absolute luminance gradient over a grid x grid
    lattice, centred and normalised per image ([B, grid * grid])."""
    grey = images.mean(1)
    gradient = (grey[:, :-1, 1:] - grey[:, :-1, :-1]).abs() + (grey[:, 1:, :-1] - grey[:, :-1, :-1]).abs()
    pooled = F.adaptive_avg_pool2d(gradient[:, None], grid).flatten(1)
    return F.normalize(pooled - pooled.mean(1, keepdim=True), dim=-1)


def _shape_at(cell: int, shape: str, colour: str, image_size: int) -> Image.Image:
    size = 2 * image_size
    image = Image.new("RGB", (size, size), COLOURS["white"])
    row, col = divmod(cell, 3)
    draw_shape(ImageDraw.Draw(image), shape, (col + 0.5) * size / 3, (row + 0.5) * size / 3, 0.13 * size, COLOURS[colour])
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def place_accuracy(embed, image_size: int, trials: int = PLACE_TRIALS) -> float:
    """Top-1 accuracy (percent) of a shape at one of 9 places retrieving, among 9 images of another
    shape in another colour (one per place), the one at its own place; chance 100 / 9."""
    rng = np.random.default_rng(0)
    colours = [name for name in COLOURS if name != "white"]
    hits = 0
    for _ in range(trials):
        shape, other_shape = rng.choice(SHAPES, 2, replace=False)
        colour, other_colour = rng.choice(colours, 2, replace=False)
        queries = embed([_shape_at(cell, str(shape), str(colour), image_size) for cell in range(9)])
        gallery = embed([_shape_at(cell, str(other_shape), str(other_colour), image_size) for cell in range(9)])
        hits += int((queries @ gallery.T).argmax(1).eq(torch.arange(9)).sum())
    return 100.0 * hits / (9 * trials)


@torch.no_grad()
def domain_shift_recall(checkpoint: Optional[str] = None, *, count: int = 300, image_size: int = 70,
                        batch_size: int = 64) -> dict[str, float]:
    """R@5 (percent) of the five query -> gallery pairings below and of the two model-free detail-layout
    rows, "chance", and the place probe's top-1 (percent; chance 100 / 9)."""
    if count < 6:
        raise ValueError(f"count must be at least 6 (R@5 among fewer is always 100), got {count}")
    visual, _ = build_backbone(checkpoint=checkpoint or SHIPPED_CHECKPOINT, image_size=image_size)
    visual.eval()
    transform = eval_transform(image_size)
    renders: dict[str, list[torch.Tensor]] = {name: [] for name in (
        "satellite", "satellite again", "old map", "old map, next style", "render", "render, other view", "drawing")}
    for i in range(count):
        city = maps.make_layout(np.random.default_rng([i, 0]))
        style = i % maps.NUM_MAP_STYLES
        part = drawings.make_part(np.random.default_rng([i, 1]))
        images = {
            "satellite": maps.render_satellite(city, np.random.default_rng([i, 2])),
            "satellite again": maps.render_satellite(city, np.random.default_rng([i, 3])),
            "old map": maps.render_old_map(city, style, np.random.default_rng([i, 4])),
            "old map, next style": maps.render_old_map(city, style + 1, np.random.default_rng([i, 5])),
            "render": drawings.render_part(part, np.random.default_rng([i, 6])),
            "render, other view": drawings.render_part(part, np.random.default_rng([i, 7])),
            "drawing": drawings.render_drawing(part, np.random.default_rng([i, 8])),
        }
        for name, image in images.items():
            renders[name].append(transform(image))

    def embed(batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([visual(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]), dim=-1)

    embeddings = {name: embed(torch.stack(tensors)) for name, tensors in renders.items()}
    layouts = {name: detail_layout(torch.stack(renders[name])) for name in ("old map", "satellite", "drawing", "render")}
    pairings = {
        "satellite -> satellite again": ("satellite", "satellite again"),
        "old map -> old map, next style": ("old map", "old map, next style"),
        "old map -> satellite": ("old map", "satellite"),
        "render -> render, other view": ("render", "render, other view"),
        "drawing -> render": ("drawing", "render"),
    }
    result = {name: _recall_at_5(embeddings[q], embeddings[g]) for name, (q, g) in pairings.items()}
    result["old map -> satellite, detail layout"] = _recall_at_5(layouts["old map"], layouts["satellite"])
    result["drawing -> render, detail layout"] = _recall_at_5(layouts["drawing"], layouts["render"])
    result["chance"] = 100.0 * 5 / count
    result[PLACE_ROW] = place_accuracy(lambda images: embed(torch.stack([transform(i) for i in images])), image_size)
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="open_clip checkpoint (default: the shipped CLIP)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=70, help="input size (default 70, the demo's)")
    args = parser.parse_args(argv)
    for name, value in domain_shift_recall(args.checkpoint, count=args.count, image_size=args.image_size).items():
        metric = {"chance": "   ", PLACE_ROW: "top-1"}.get(name, "R@5")
        print(f"{name:40s} {metric:5s} {value:5.1f} %")
    print(f"{'place chance':40s} {'':5s} {100 / 9:5.1f} %")


if __name__ == "__main__":
    main()
