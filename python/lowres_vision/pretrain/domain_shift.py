"""How far a checkpoint's frozen image embedding is invariant to the synthetic benchmark's domain shifts.

Each of `count` generated cities (parts) is rendered twice per domain with fresh seeds, and the
cosine of the frozen output embeddings retrieves each rendering's partner among all `count`
(R@5; chance 5 / count). Retrieval within one domain says whether the content (a city's layout, a
part's shape) is in the features at all; across map styles and across domains says whether it
survives the change of rendering, which is what the retrieval tasks need. A minute on CPU, so a
pretraining experiment can be judged before any demo run:

    python -m lowres_vision.pretrain.domain_shift --checkpoint OUT/open_clip_model.safetensors
"""

from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data import eval_transform
from ..metrics import retrieval_metrics, retrieval_ranks
from ..models.backbone import SHIPPED_CHECKPOINT, build_backbone
from ..synth import drawings, maps


def _recall_at_5(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """R@5 of query i retrieving gallery item i, with the evaluation's own ranking."""
    partners = torch.arange(queries.shape[0])
    return retrieval_metrics(retrieval_ranks(queries, gallery, partners), ks=(5,))["R@5"]


@torch.no_grad()
def domain_shift_recall(checkpoint: Optional[str] = None, *, count: int = 300, image_size: int = 70,
                        batch_size: int = 64) -> dict[str, float]:
    """R@5 (percent) of the five query -> gallery pairings below, and "chance"."""
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
    embeddings = {}
    for name, tensors in renders.items():
        batch = torch.stack(tensors)
        embeddings[name] = F.normalize(torch.cat([visual(batch[i:i + batch_size]) for i in range(0, count, batch_size)]), dim=-1)
    pairings = {
        "satellite -> satellite again": ("satellite", "satellite again"),
        "old map -> old map, next style": ("old map", "old map, next style"),
        "old map -> satellite": ("old map", "satellite"),
        "render -> render, other view": ("render", "render, other view"),
        "drawing -> render": ("drawing", "render"),
    }
    result = {name: _recall_at_5(embeddings[q], embeddings[g]) for name, (q, g) in pairings.items()}
    result["chance"] = 100.0 * 5 / count
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="open_clip checkpoint (default: the shipped CLIP)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=70, help="input size (default 70, the demo's)")
    args = parser.parse_args(argv)
    for name, value in domain_shift_recall(args.checkpoint, count=args.count, image_size=args.image_size).items():
        print(f"{name:32s} R@5 {value:5.1f} %" if name != "chance" else f"{'chance':32s}     {value:5.1f} %")


if __name__ == "__main__":
    main()
