"""GeNIe hard negatives (GeNIe, arXiv:2312.02548) and GeNIe-Ada's per-image choice of the noise ratio."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

GENIE_ADA_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)

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
