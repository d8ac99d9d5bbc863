"""Frozen vision backbones: open_clip vision towers by name, timm ViTs, and tiny offline configs.

Names are open_clip model names ("ViT-H-14", "ViT-B-16", ...) or timm model names prefixed with
"timm:" ("timm:vit_small_patch14_reg4_dinov2"). `pretrained` is an open_clip tag ("laion2b_s32b_b79k"),
or a local weights file; for timm a truthy tag downloads the default weights and a local path is
loaded as the model's weights file. With `pretrained=None` the weights stay randomly initialised,
which is what offline tests use. `checkpoint=` loads a local file; one with `open_clip_config.json`
beside it (what `lowres-vision pretrain` writes) is built from that config: the project's own CLIP,
pretrained on a generated corpus, ships at `SHIPPED_CHECKPOINT` and is the demo's and zeroshot's
default backbone. `tiny=True` builds the named architecture shrunk to
4 layers, width 64, 4 heads and patch 14, everything else from the model's own config (QuickGELU,
layer scale, register tokens, ...), randomly initialised in milliseconds: the offline stand-in of
that backbone. The text tower of a tiny open_clip model is a 2-layer, width-64 transformer.

`PAPER_BACKBONES` lists the foundation models of the LITE paper's comparison (arXiv 2401.04716,
Tables 2 and 5) that open_clip or timm provide, with the names and weights tags to build them.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torch import nn

# OpenAI CLIP normalisation, the preprocessing the LITE evaluation uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TIMM_PREFIX = "timm:"
TINY_WIDTH, TINY_LAYERS, TINY_HEAD_WIDTH, TINY_PATCH = 64, 4, 16, 14
TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
# The CLIP this project pretrains with `lowres-vision pretrain` and ships (its model card lies beside it).
SHIPPED_CHECKPOINT = str(Path(__file__).resolve().parents[1] / "weights" / "lowres-clip" / "open_clip_model.safetensors")


@dataclass(frozen=True)
class PaperBackbone:
    """A backbone of the LITE paper's comparison: `build_backbone(name, pretrained)` builds it."""

    name: str
    pretrained: str
    note: str = ""


# BLIP (its ViT is in neither library) and AIM (arXiv 2401.08541; timm has only AIMv2, another model)
# are not available; SAM's image encoder has no class token, so the baselines' heads cannot read it.
PAPER_BACKBONES = {
    "ImageBind": PaperBackbone("ViT-H-14", "laion2b_s32b_b79k",
                               "ImageBind's image encoder is this OpenCLIP ViT-H/14, kept frozen in ImageBind"),
    "CLIP": PaperBackbone("ViT-L-14-quickgelu", "openai"),
    "DINOv2": PaperBackbone("timm:vit_large_patch14_dinov2.lvd142m", "lvd142m"),
    "DINOv2 with registers": PaperBackbone("timm:vit_large_patch14_reg4_dinov2.lvd142m", "lvd142m"),
    "SAM": PaperBackbone("timm:samvit_huge_patch16.sa1b", "sa1b", "no class token: zero-shot embedding only"),
}


def preprocess_config(image_size: int = 224, *, mean=CLIP_MEAN, std=CLIP_STD, interpolation: str = "bicubic") -> Dict[str, Any]:
    """How images must be prepared for a backbone: resize the short side to `image_size` with
    `interpolation`, centre crop `image_size`, normalise with `mean`/`std`."""
    return {"image_size": int(image_size), "interpolation": interpolation, "mean": tuple(mean), "std": tuple(std)}


def freeze(module: nn.Module) -> nn.Module:
    """Turns off gradients for every parameter of `module` (in place) and returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _check_sources(pretrained: Optional[str], checkpoint: Optional[str]) -> None:
    if pretrained is not None and checkpoint is not None:
        raise ValueError(f"build_backbone: give either pretrained={pretrained!r} or checkpoint={checkpoint!r}, not both")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"build_backbone: checkpoint={checkpoint!r} is not a file")


def checkpoint_config(checkpoint: str) -> Optional[Dict[str, Any]]:
    """The open_clip config saved beside a checkpoint file (`open_clip_config.json`, as `lowres-vision
    pretrain` and open_clip's hub exports write it: {"model_cfg": ..., "preprocess_cfg": ...}), or None."""
    path = Path(checkpoint).with_name(OPEN_CLIP_CONFIG_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def tiny_clip(image_size: int = 224, *, embed_dim: int = 64, name: str = "ViT-B-16") -> nn.Module:
    """The open_clip model `name` shrunk to a randomly initialised 4-layer, width-64, patch-14 vision
    tower (the rest of its vision config kept) and a 2-layer, width-64 text tower."""
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"build_backbone: {name!r} is not an open_clip model name (timm models are named 'timm:<name>')")
    vision_cfg = dict(config["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        raise ValueError(f"build_backbone: {name!r} has a timm vision trunk; build its tiny form as "
                         f"'timm:{vision_cfg['timm_model_name']}'")
    vision_cfg.update(image_size=image_size, layers=TINY_LAYERS, width=TINY_WIDTH, head_width=TINY_HEAD_WIDTH,
                      patch_size=TINY_PATCH)
    # quick_gelu is the one top-level setting that shapes the vision tower (the OpenAI CLIP weights').
    return open_clip.model.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=dict(TINY_TEXT_CFG),
                                quick_gelu=config.get("quick_gelu", False))


def build_clip(
    name: str = "ViT-B-16",
    pretrained: Optional[str] = None,
    *,
    checkpoint: Optional[str] = None,
    image_size: int = 224,
    tiny: bool = False,
) -> nn.Module:
    """The full open_clip image-text model, frozen and in eval mode (for zero-shot users of the text tower).

    `pretrained` is an open_clip tag or local path passed to `open_clip.create_model`;
    `checkpoint` is a local file loaded with `open_clip.load_checkpoint` (strict). A checkpoint with
    an `open_clip_config.json` beside it is built from that config and `name` is ignored; a different
    `image_size` than it was trained at interpolates its position embeddings.
    """
    import open_clip

    _check_sources(pretrained, checkpoint)
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"build_clip: {name!r} is a timm vision model; only open_clip names have a text tower")
    config = checkpoint_config(checkpoint) if checkpoint is not None else None
    if tiny:
        model = tiny_clip(image_size, name=name)
    elif config is not None:
        model_cfg = copy.deepcopy(config["model_cfg"])
        model_cfg["vision_cfg"]["image_size"] = image_size
        model = open_clip.model.CLIP(**model_cfg)
    else:
        force_size = None if image_size == 224 else image_size
        model = open_clip.create_model(name, pretrained=pretrained, force_image_size=force_size)
    if checkpoint is not None:
        open_clip.load_checkpoint(model, checkpoint)
    return freeze(model).eval()


def _open_clip_preprocess(visual: nn.Module, image_size: int) -> Dict[str, Any]:
    config = getattr(visual, "preprocess_cfg", None) or {}
    return preprocess_config(
        image_size,
        mean=config.get("mean", CLIP_MEAN),
        std=config.get("std", CLIP_STD),
        interpolation=config.get("interpolation", "bicubic"),
    )


def _tiny_timm(name: str, image_size: int) -> nn.Module:
    import timm

    # timm passes these over the named model's own arguments; the rest of its architecture stays.
    return timm.create_model(
        name, pretrained=False, num_classes=0, img_size=image_size, patch_size=TINY_PATCH, embed_dim=TINY_WIDTH,
        depth=TINY_LAYERS, num_heads=TINY_WIDTH // TINY_HEAD_WIDTH,
    )


def _build_timm(name: str, pretrained: Optional[str], checkpoint: Optional[str], image_size: int, tiny: bool):
    import timm
    from timm.data import resolve_data_config

    if tiny:
        model = _tiny_timm(name, image_size)
    else:
        options: Dict[str, Any] = {"num_classes": 0, "img_size": image_size}
        if pretrained is not None and os.path.isfile(pretrained):
            options["pretrained_cfg_overlay"] = {"file": pretrained}
        model = timm.create_model(name, pretrained=pretrained is not None, **options)
    if checkpoint is not None:
        timm.models.load_checkpoint(model, checkpoint, strict=True)
    data = resolve_data_config({}, model=model)
    config = preprocess_config(image_size, mean=data["mean"], std=data["std"], interpolation=data["interpolation"])
    return freeze(model), config


def build_backbone(
    name: str = "ViT-B-16",
    pretrained: Optional[str] = None,
    *,
    checkpoint: Optional[str] = None,
    image_size: int = 224,
    tiny: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A frozen vision tower and its preprocessing config.

    Returns `(visual, preprocess_cfg)`: `visual` is an open_clip `VisionTransformer` (the `.visual`
    of the CLIP model) or, for "timm:<name>", a timm `VisionTransformer` without classifier; every
    parameter has `requires_grad=False`. `preprocess_cfg` is a dict with `image_size`,
    `interpolation` ("bicubic"), `mean` and `std` (CLIP's for open_clip models).
    """
    _check_sources(pretrained, checkpoint)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], pretrained, checkpoint, image_size, tiny)
    visual = build_clip(name, pretrained, checkpoint=checkpoint, image_size=image_size, tiny=tiny).visual
    return visual, _open_clip_preprocess(visual, image_size)
