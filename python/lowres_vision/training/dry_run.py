"""`dry_run_report`: what a configuration would train (parameters and GFLOPs per baseline), without training."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..config import BASELINES, TrainConfig
from ..data import is_retrieval
from .inputs import task_class_names
from .model import build_model

def _vit_spec(cfg: TrainConfig, visual: Optional[nn.Module]):
    """The analytic shape (models.flops.ViTSpec) of cfg's tower: read off the built open_clip tower,
    else from the tiny constants or the open_clip config by name; None where neither applies (timm)."""
    from ..models import backbone
    from ..models.flops import ViTSpec, open_clip_spec

    if visual is not None:
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            return None
        width = visual.transformer.width
        # Injected blocks wrap the original, so the MLP is found by name at any depth.
        mlp_in = next(module for name, module in visual.transformer.named_modules() if name.endswith("mlp.c_fc"))
        return ViTSpec(image_size=cfg.image_size, patch_size=visual.patch_size[0], width=width,
                       layers=len(visual.transformer.resblocks), mlp_ratio=mlp_in.out_features / width,
                       embed_dim=None if visual.proj is None else visual.proj.shape[1])
    if cfg.backbone.startswith(backbone.TIMM_PREFIX):
        return None
    if cfg.tiny:
        return ViTSpec(image_size=cfg.image_size, patch_size=backbone.TINY_PATCH, width=backbone.TINY_WIDTH,
                       layers=backbone.TINY_LAYERS, embed_dim=backbone.TINY_WIDTH)
    return open_clip_spec(cfg.backbone, cfg.image_size)

def _measured_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of the built model, attributed to the baseline whose module holds them."""
    from lowres_kernels.nn import DomainAttention, SubKernelPatchEmbed

    from ..models.adapters import ADAPTERS

    owners = {"tokenization": SubKernelPatchEmbed, "domain_attention": DomainAttention, "adapter": tuple(ADAPTERS.values())}
    counted = {name: 0 for name in (*BASELINES, "head")}
    seen: set[int] = set()
    for module in model.visual.modules():
        for name, kind in owners.items():
            if isinstance(module, kind):
                for parameter in module.parameters():
                    if parameter.requires_grad and id(parameter) not in seen:
                        seen.add(id(parameter))
                        counted[name] += parameter.numel()
    counted["head"] = sum(parameter.numel() for parameter in model.head.parameters() if parameter.requires_grad)
    counted["total"] = sum(parameter.numel() for _, parameter in model.trainable_parameters())
    return counted

def dry_run_report(cfg: TrainConfig, *, build: bool = True) -> dict[str, Any]:
    """What cfg would train, without training: per baseline the trainable parameters it adds and
    the GFLOPs (multiply-adds, models.flops) of one image with it, and with all of cfg's baselines.

    `build=False` skips building the model (analytic numbers only: no weights are loaded, so it
    works for ViT-H-14 anywhere). With `build=True` the measured counts of the built model are
    added; the head is counted when the train split is there to give the number of classes.
    """
    from ..data import split_exists
    from ..models.flops import added_parameters, gflops_report

    cfg.validate()
    chosen = {name: getattr(cfg, name) for name in BASELINES if getattr(cfg, name) is not None}
    model, head_known = None, is_retrieval(cfg.task) or split_exists(cfg.task, cfg.data_root, "train")
    if build:
        class_names = task_class_names(cfg) if head_known else None
        # Without the train split the number of classes is unknown: an (uncounted) embedding head stands in.
        model, _ = build_model(cfg, None if class_names is None else len(class_names))
    spec = _vit_spec(cfg, None if model is None else model.visual)
    measured = None if model is None else _measured_parameters(model)
    rows = []
    for name, options in [*chosen.items(), *([("all", chosen)] if len(chosen) > 1 else [])]:
        injections = options if name == "all" else {name: options}
        row: dict[str, Any] = {"baseline": name, "options": options}
        if spec is not None:
            row["parameters"] = added_parameters(spec, **injections)
            row["gflops"] = gflops_report(spec, **injections)["gflops_injected"]
        if measured is not None:
            row["measured_parameters"] = sum(measured[key] for key in (chosen if name == "all" else [name]))
        rows.append(row)
    return {
        "backbone": cfg.backbone + (" (tiny)" if cfg.tiny else ""),
        "image_size": cfg.image_size,
        "frozen_gflops": None if spec is None else gflops_report(spec)["gflops_frozen"],
        "baselines": rows,
        "head_parameters": measured["head"] if measured is not None and head_known else None,
        "trainable_parameters": measured["total"] if measured is not None and head_known else None,
    }
