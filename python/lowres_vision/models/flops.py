"""Trainable parameters and forward cost of a ViT with and without the baselines, computed analytically.

What counts as a FLOP: one multiply-add (so these "GFLOPs" are GMACs, the convention of fvcore and
timm, under which ViT-B/16 at 224 px costs 17.6 and ViT-H/14 167.3). Counted: every matrix product
and convolution (patch embedding, q/k/v, attention scores, attention-weighted sum, output
projection, MLP, final projection). Not counted: normalisations, softmax, activations, additions.
Costs are per image (batch 1).

The paper's Table 10 reports 224.6 GFLOPs for ImageBind's ViT-H/14 at 224 px and 233.6 with
tokenization and domain attention. No counting of the vision tower's matrix products reproduces
224.6 (multiply-adds give 167.3, two FLOPs per multiply-add 334.6), so the absolute numbers are not
comparable. Its increment is: +9.0 matches the release's naive tokenization (49 separate u x u
convolutions at stride u, about 9.3 G multiply-adds net of the replaced patch conv) within 4%, while
the reported +0.0 for domain attention means the paper's counter did not see its matrix products.
`implementation="naive"` reproduces the release's cost; "fused" (the default) is what
lowres_kernels computes: tokenization as one u x u convolution with the mixed kernel, domain
attention as one mixed N x N matrix for all maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from torch import nn

from .adapters import adapter_kind

GIGA = 1e9


@dataclass(frozen=True)
class ViTSpec:
    """The shape of a plain ViT: enough to count its parameters and multiply-adds."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    mlp_ratio: float = 4.0
    num_prefix_tokens: int = 1
    embed_dim: Optional[int] = 1024  # output projection width; None if the tower has none
    in_channels: int = 3

    @property
    def grid(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTSpec: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid**2

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


VIT_H_14 = ViTSpec()


def open_clip_spec(name: str, image_size: Optional[int] = None) -> ViTSpec:
    """The ViTSpec of an open_clip model from its config (no model is built)."""
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None or "timm_model_name" in config.get("vision_cfg", {}):
        raise ValueError(f"open_clip_spec: {name!r} is not an open_clip model with a plain ViT vision tower")
    vision = config["vision_cfg"]
    size = vision["image_size"] if image_size is None else image_size
    return ViTSpec(
        image_size=size if isinstance(size, int) else size[0], patch_size=vision["patch_size"], width=vision["width"],
        layers=vision["layers"], mlp_ratio=vision.get("mlp_ratio", 4.0), embed_dim=config["embed_dim"],
    )


def _tokenization_options(options: Mapping[str, Any]) -> tuple:
    sub, step = options.get("sub", 7), options.get("step", 2)
    num_subkernels = options.get("num_subkernels", 49)
    return sub, step, num_subkernels, options.get("blend", 1.0)


def _adapter_block_modules(spec: ViTSpec, adapter: Mapping[str, Any]) -> list:
    """The adapter modules one block gets, built on the meta device (shapes only, nothing allocated)."""
    kind, options = adapter_kind(adapter)
    return kind.block_modules(spec.width, device="meta", **options)


def backbone_macs(spec: ViTSpec) -> int:
    """Multiply-adds of one forward of the frozen tower."""
    n, d = spec.num_tokens, spec.width
    patch_embed = spec.grid**2 * d * spec.in_channels * spec.patch_size**2
    attention = 4 * n * d * d + 2 * n * n * d  # q, k, v, out projections; scores and weighted sum
    mlp = 2 * n * d * spec.mlp_width
    projection = 0 if spec.embed_dim is None else d * spec.embed_dim
    return patch_embed + spec.layers * (attention + mlp) + projection


def added_macs(
    spec: ViTSpec,
    *,
    tokenization: Optional[Mapping[str, Any]] = None,
    domain_attention: Optional[Mapping[str, Any]] = None,
    adapter: Optional[Mapping[str, Any]] = None,
    implementation: str = "fused",
) -> int:
    """Multiply-adds the injections add to (or, negative, remove from) one forward; options as for `inject`."""
    if implementation not in ("fused", "naive"):
        raise ValueError(f"added_macs: implementation must be 'fused' or 'naive', got {implementation!r}")
    n, d, c = spec.num_tokens, spec.width, spec.in_channels
    total = 0
    if tokenization is not None:
        sub, _, num_subkernels, blend = _tokenization_options(tokenization)
        if spec.image_size % sub:
            raise ValueError(f"added_macs: image_size {spec.image_size} is not a multiple of sub={sub}")
        positions = (spec.image_size // sub) ** 2
        one_sub_conv = positions * d * c * sub * sub
        if implementation == "naive":  # T convolutions, then the softmax-weighted sum over T maps
            total += num_subkernels * (one_sub_conv + positions * d)
        else:
            total += one_sub_conv
        if blend == 1.0:  # the frozen patch conv is no longer computed
            total -= spec.grid**2 * d * c * spec.patch_size**2
    if domain_attention is not None:
        maps = domain_attention.get("num_maps", 10)
        value = n * d * d
        mixed_and_projected = n * n * d + n * d * d
        total += value + (maps if implementation == "naive" else 1) * mixed_and_projected
    if adapter is not None:
        total += spec.layers * sum(module.multiply_adds(n) for module in _adapter_block_modules(spec, adapter))
    return total


def added_parameters(
    spec: ViTSpec,
    *,
    tokenization: Optional[Mapping[str, Any]] = None,
    domain_attention: Optional[Mapping[str, Any]] = None,
    adapter: Optional[Mapping[str, Any]] = None,
) -> int:
    """Trainable parameters the injections add (the backbone itself stays frozen)."""
    total = 0
    if tokenization is not None:
        total += _tokenization_options(tokenization)[2]
    if domain_attention is not None:
        maps = domain_attention.get("num_maps", 10)
        total += maps * (2 * spec.grid) ** 2 + maps + 1  # maps, mixing logits, alpha
    if adapter is not None:
        modules = _adapter_block_modules(spec, adapter)
        total += spec.layers * sum(count_trainable_parameters(module) for module in modules)
    return total


def gflops_report(spec: ViTSpec = VIT_H_14, *, implementation: str = "fused", **injections) -> Dict[str, float]:
    """{"gflops_frozen", "gflops_injected", "added_parameters"} for one configuration of injections."""
    frozen = backbone_macs(spec)
    return {
        "gflops_frozen": frozen / GIGA,
        "gflops_injected": (frozen + added_macs(spec, implementation=implementation, **injections)) / GIGA,
        "added_parameters": float(added_parameters(spec, **injections)),
    }


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of scalars in parameters with requires_grad (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "GIGA", "VIT_H_14", "ViTSpec", "added_macs", "added_parameters", "backbone_macs", "count_trainable_parameters",
    "gflops_report", "open_clip_spec",
]
