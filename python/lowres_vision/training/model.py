"""The model a run trains: the frozen backbone with the run's baselines injected, and its task head."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..config import ConfigError, TrainConfig
from .run_directory import seed_everything

def tower_width(visual: nn.Module) -> int:
    # open_clip VisionTransformer: transformer.width; timm VisionTransformer: embed_dim.
    transformer = getattr(visual, "transformer", None)
    width = getattr(transformer, "width", None) or getattr(visual, "embed_dim", None)
    if not isinstance(width, int):
        raise ValueError(f"cannot tell the token width of a {type(visual).__name__} tower")
    return width

def _check_image_size(visual: nn.Module, image_size: int) -> None:
    """Sub-kernel tokenization cuts the image into whole q x q patches; another size fails at the first step."""
    from lowres_kernels.nn import SubKernelPatchEmbed

    for module in visual.modules():
        if isinstance(module, SubKernelPatchEmbed) and image_size % module.patch_size:
            raise ConfigError(f"image_size {image_size} must be a multiple of the patch size {module.patch_size} "
                              f"with tokenization")


def build_model(cfg: TrainConfig, num_classes: Optional[int]) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen backbone with cfg's baselines injected and a task head, and its preprocessing config.

    Classification (`num_classes` given) gets a trainable `ClassificationHead`. Retrieval gets an
    `EmbeddingHead` copied from the tower's own final norm and projection, so it starts from the
    frozen model's embedding; it is trained only by a linear probe. Seeded by cfg.seed, so that
    randomly initialised backbones and heads are the same in every run and process.
    """
    from ..models import ClassificationHead, EmbeddingHead, LowresModel, build_backbone, inject

    seed_everything(cfg.seed)
    visual, preprocess = build_backbone(cfg.backbone, cfg.pretrained, checkpoint=cfg.checkpoint,
                                        image_size=cfg.image_size, tiny=cfg.tiny)
    try:
        inject(visual, tokenization=cfg.tokenization, domain_attention=cfg.domain_attention, adapter=cfg.adapter)
    except ValueError as error:  # options that do not fit this backbone (say, sub=7 with 16-pixel patches)
        raise ConfigError(f"{cfg.backbone}: {error}") from error
    _check_image_size(visual, cfg.image_size)
    if num_classes is not None:
        # The logistic-regression probe's head holds sklearn's coefficients and intercepts (training/linear_probe.py).
        logreg = cfg.linear_probe == "logreg"
        head = ClassificationHead(tower_width(visual), num_classes, bias=logreg, norm_affine=not logreg)
    else:
        try:
            head = EmbeddingHead.from_visual(visual)
        except ValueError:  # a tower without an open_clip final norm/projection (timm)
            head = EmbeddingHead(tower_width(visual))
        head.requires_grad_(cfg.linear_probe is not None)
    return LowresModel(visual, head), preprocess
