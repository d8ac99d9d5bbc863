"""GeNIe hard negatives (GeNIe, arXiv:2312.02548) and GeNIe-Ada's per-image choice of the noise ratio."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .cache import derive_seed

GENIE_ADA_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)


def plan_hard_negatives(labels: Sequence[int], keys: Sequence[str], per_class: int | None,
                        seed: int) -> list[tuple[int, int, int]]:
    """(source position, target class, repeat) of every GeNIe image to make from sources with `labels`.

    `per_class=None` is the GeNIe release (repository UCDvision/GeNIe, file genie.py): every source
    image once for every other class among the sources, so a target class gets one image per source
    image outside it (equal counts when the classes have equal shots: 4 per class in 5-way 1-shot).
    `per_class=n` is the paper's balance (arXiv:2312.02548, Secs. 3.1-3.2: "the number of generated images
    per class", "we limit the number of generated images to 50 samples per class"): exactly n per
    target class, from the other classes' images in a seeded random order (`keys`, e.g. content
    hashes, make it independent of the sources' order), cycling when n exceeds them.
    """
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise InputError(f"GeNIe needs source images of at least two classes, got classes {classes}")
    plan = []
    for target in classes:
        others = sorted((position for position, label in enumerate(labels) if label != target),
                        key=lambda position: keys[position])
        if per_class is None:
            plan.extend((position, target, 0) for position in others)
            continue
        order = torch.randperm(len(others), generator=torch.Generator().manual_seed(
            derive_seed(seed, "genie-sources", target))).tolist()
        plan.extend((others[order[k % len(others)]], target, k // len(others)) for k in range(per_class))
    return plan

# images -> embeddings [n, d]; GeNIe-Ada L2-normalises whatever it is given.
Embedder = Callable[[list], torch.Tensor]


def projected_distances(candidates: torch.Tensor, source: torch.Tensor, target_mean: torch.Tensor) -> torch.Tensor:
    """d_r = (z_r − z_s)·v / ‖v‖ with v = target_mean − z_s, for each row z_r of `candidates` [k, d]."""
    if candidates.ndim != 2 or source.shape != candidates.shape[1:] or target_mean.shape != source.shape:
        raise ValueError(
            f"expected candidates [k, d], source [d], target_mean [d]; got candidates {tuple(candidates.shape)}, "
            f"source {tuple(source.shape)}, target_mean {tuple(target_mean.shape)}"
        )
    direction = target_mean - source
    direction = direction / direction.norm().clamp_min(torch.finfo(direction.dtype).eps)
    return (candidates - source) @ direction


def select_noise_ratio(ratios: Sequence[float], distances: torch.Tensor) -> float:
    """The ratio right after the largest jump |d_i − d_{i−1}| of the projected distance (Algorithm 1).

    `ratios` ascending, `distances` the projected distance of the image generated at each ratio.
    """
    distances = torch.as_tensor(distances).flatten()
    if len(ratios) < 2 or len(ratios) != distances.numel():
        raise ValueError(f"need at least two ratios and one distance per ratio; got {len(ratios)} ratios, "
                         f"{distances.numel()} distances")
    if any(later <= earlier for earlier, later in zip(ratios, ratios[1:])):
        raise ValueError(f"ratios must be strictly increasing, got {list(ratios)}")
    jumps = (distances[1:] - distances[:-1]).abs()
    return float(ratios[int(jumps.argmax()) + 1])


def class_mean_embeddings(embeddings: torch.Tensor, labels: Sequence[int]) -> dict[int, torch.Tensor]:
    """Mean of the L2-normalised embeddings of each class present in `labels`."""
    embeddings = F.normalize(embeddings.float(), dim=-1)
    labels_tensor = torch.as_tensor(list(labels))
    return {int(label): embeddings[labels_tensor == label].mean(0) for label in labels_tensor.unique().tolist()}


def backbone_embedder(visual: torch.nn.Module, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                      device: str | torch.device = "cpu", batch_size: int = 32) -> Embedder:
    """Embeds PIL images with a frozen vision tower (resize, centre crop, normalise; no gradients)."""
    from torchvision import transforms as T

    preprocess = T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size),
        T.ToTensor(), T.Normalize(mean, std),
    ])
    visual = visual.eval().to(device)
    parameter = next(visual.parameters())

    @torch.no_grad()
    def embed(images: list) -> torch.Tensor:
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(image.convert("RGB")) for image in images[start:start + batch_size]])
            outputs.append(visual(batch.to(parameter.device, parameter.dtype)).float().cpu())
        return torch.cat(outputs)

    return embed


@dataclass(frozen=True)
class EmbedderSpec:
    """The vision tower GeNIe-Ada scores with: an open_clip name or "timm:<name>", its weights, input size.

    GeNIe-Ada traces the generated images "through the lens of the classifier" (arXiv:2312.02548,
    Sec. 2; the release embeds with the pre-trained encoder the classifier is fit on): here, the
    frozen backbone being adapted (`from_train_config`) or a named model. `seed` fixes a random
    initialisation, which only tests and demos should ever score with.
    """

    backbone: str
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None
    image_size: int = 224
    tiny: bool = False
    seed: int = 0

    @classmethod
    def from_train_config(cls, cfg) -> "EmbedderSpec":
        """The frozen backbone a `TrainConfig` adapts (as `train` builds it, seed included)."""
        return cls(cfg.backbone, cfg.pretrained, cfg.checkpoint, cfg.image_size, cfg.tiny, cfg.seed)

    @property
    def randomly_initialised(self) -> bool:
        return self.tiny or (self.pretrained is None and self.checkpoint is None)

    def identity(self) -> str:
        """Names the embedder in GeNIe-Ada's cache keys and manifest entries."""
        return json.dumps(asdict(self), sort_keys=True)


def build_embedder(spec: EmbedderSpec, *, device: str | torch.device = "cpu", allow_random: bool = False) -> Embedder:
    """GeNIe-Ada's embedder; a randomly initialised tower is refused unless `allow_random`."""
    from ..models.backbone import build_backbone

    if spec.randomly_initialised and not allow_random:
        raise InputError(
            f"GeNIe-Ada would score with a randomly initialised {spec.backbone!r} (no pretrained weights"
            f"{', tiny' if spec.tiny else ''}): its noise ratios would be chosen by chance; give the embedder "
            f"pretrained weights or a checkpoint, or allow a random embedder explicitly (--allow-random-embedder)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        visual, preprocess = build_backbone(spec.backbone, spec.pretrained, checkpoint=spec.checkpoint,
                                            image_size=spec.image_size, tiny=spec.tiny)
    return backbone_embedder(visual, image_size=preprocess["image_size"], mean=preprocess["mean"],
                             std=preprocess["std"], device=device)
