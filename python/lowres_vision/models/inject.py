"""`inject`: attaches the low-resource baselines and adapters to a frozen ViT, in place.

Blocks that receive domain attention or an AdaptFormer are replaced by an `InjectedBlock` (models.tower)
that holds the original block; nothing of the original is copied or monkeypatched.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import nn

from lowres_kernels.nn import DomainAttention, SubKernelPatchEmbed

from .adapters import adapter_kind
from .backbone import freeze
from .tower import Tower

TOKENIZATION_OPTIONS = {"sub", "step", "pool", "blend", "num_subkernels", "backend"}
DOMAIN_ATTENTION_OPTIONS = {"block", "num_maps", "init", "backend"}


def _options(kind: str, given: Mapping[str, Any], allowed: set) -> Dict[str, Any]:
    if not isinstance(given, Mapping):
        raise ValueError(f"inject: {kind} must be a dict of options or None, got {type(given).__name__}")
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(f"inject: unknown {kind} options {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(given)


def _inject_tokenization(tower: Tower, options: Dict[str, Any]) -> None:
    conv = getattr(tower.owner, tower.conv_name)
    if isinstance(conv, SubKernelPatchEmbed):
        raise ValueError("inject: tokenization is already injected (the patch embedding is a SubKernelPatchEmbed)")
    setattr(tower.owner, tower.conv_name, SubKernelPatchEmbed.from_conv(conv, **options))


def _inject_domain_attention(tower: Tower, options: Dict[str, Any]) -> None:
    num_blocks = len(tower.blocks)
    index = options.pop("block", None)
    index = num_blocks // 2 if index is None else index
    if not -num_blocks <= index < num_blocks:
        raise ValueError(f"inject: domain_attention block={index} is out of range for {num_blocks} blocks")
    if tower.grid[0] != tower.grid[1]:
        raise ValueError(f"inject: domain attention needs a square patch grid, got {tower.grid}")
    block = tower.block(index, create=True)
    if getattr(block.block.attn, "gate", None) is not None:
        raise ValueError(f"inject: block {index} uses gated attention, which domain attention does not support")
    if block.domain_attention is not None:
        raise ValueError(f"inject: block {index} already has domain attention")
    reference = next(tower.frozen_block(block).parameters())
    block.domain_attention = DomainAttention(
        options.pop("num_maps", 10), tower.grid[0], tower.num_prefix_tokens, **options,
        device=reference.device, dtype=reference.dtype,
    )


def inject(
    visual: nn.Module,
    *,
    tokenization: Optional[Mapping[str, Any]] = None,
    domain_attention: Optional[Mapping[str, Any]] = None,
    adapter: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Freezes `visual` and attaches the requested trainable pieces, in place; returns `visual`.

    tokenization=dict(sub=7, step=2, pool="max", blend=1.0): the patch conv becomes a
        `lowres_kernels.nn.SubKernelPatchEmbed` sharing the frozen conv weight.
    domain_attention=dict(block=None, num_maps=10, init="ones"): a `lowres_kernels.nn.DomainAttention`
        in block `block` (None = len(blocks) // 2), fed with that block's value projection of its
        normed input, projected by its attention's output projection and added to the residual
        stream right after the block's attention branch. init="ones" starts as the authors' release
        does (the maps then stay identical to each other); "random" breaks that symmetry.
    adapter=dict(kind="adaptformer", bottleneck=2, scale=0.1, bias=False) in every block, or
        dict(kind="lora", rank=8, alpha=None, targets=("q", "v", "out")) on every block's attention
        projections (alpha=None means alpha = rank); the kinds are `models.adapters.ADAPTERS`.

    Everything that was in `visual` before stays frozen; only the injected parameters train. With
    blend=0, AdaptFormer's up projection / LoRA's B at zero and domain attention alpha=0 the
    injected model computes exactly what the frozen one does.
    """
    tower = Tower(visual)
    freeze(visual)
    if tokenization is not None:
        _inject_tokenization(tower, _options("tokenization", tokenization, TOKENIZATION_OPTIONS))
    if domain_attention is not None:
        _inject_domain_attention(tower, _options("domain_attention", domain_attention, DOMAIN_ATTENTION_OPTIONS))
    if adapter is not None:
        kind, options = adapter_kind(adapter)
        kind.attach(tower, **options)
    return visual
