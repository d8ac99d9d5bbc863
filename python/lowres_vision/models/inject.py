"""`inject`: attaches the low-resource baselines and adapters to a frozen ViT, in place (SPEC section 3).

Supported towers: open_clip's `VisionTransformer` (blocks are `ResidualAttentionBlock`), timm's
`VisionTransformer` (blocks are `Block`, any number of class/register prefix tokens), and open_clip
towers whose trunk is a timm ViT (`TimmModel.trunk`). Blocks that receive domain attention or an
AdaptFormer are replaced by an `InjectedBlock` that holds the original block; nothing of the
original is copied or monkeypatched, so `state_dict` keys of the frozen weights only gain a
`.block` level inside wrapped blocks.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowres_kernels.nn import DomainAttention, SubKernelPatchEmbed

from .adapters import AdaptFormer, add_lora
from .backbone import freeze

TOKENIZATION_OPTIONS = {"sub", "step", "pool", "blend", "num_subkernels", "backend"}
DOMAIN_ATTENTION_OPTIONS = {"block", "num_maps", "backend"}
ADAPTER_OPTIONS = {"adaptformer": {"kind", "bottleneck", "scale"}, "lora": {"kind", "rank", "alpha", "targets"}}
LORA_TARGETS = ("q", "k", "v", "out")


class InjectedBlock(nn.Module):
    """A frozen pre-norm transformer block with optional domain attention and AdaptFormer:

        h = norm1(x)
        x = x + attention_branch(h)                       # the block's own, unchanged
        x = x + alpha * proj(P @ value(h))                # domain attention, if any
        n = norm2(x)
        x = x + mlp_branch(n) + adapter(n)                # AdaptFormer beside the MLP, if any

    `value` is the block's own value projection (all heads, full width) and `proj` its attention's
    output projection. Subclasses map these onto one library's block layout.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.domain_attention: Optional[DomainAttention] = None
        self.adapter: Optional[nn.Module] = None

    def _forward(self, x: torch.Tensor, attention_branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        h = self.norm1(x)
        x = x + attention_branch(h)
        if self.domain_attention is not None:
            x = x + self.domain_attention(self.value(h), proj=self.output_projection)
        n = self.norm2(x)
        x = x + self.mlp_branch(n)
        if self.adapter is not None:
            x = x + self.adapter(n)
        return x


class OpenClipInjectedBlock(InjectedBlock):
    """Wraps an open_clip `ResidualAttentionBlock` (batch-first, `nn.MultiheadAttention`)."""

    @property
    def width(self) -> int:
        return self.block.attn.embed_dim

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.ln_1(x)

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.ln_2(x)

    def mlp_branch(self, n: torch.Tensor) -> torch.Tensor:
        return self.block.ls_2(self.block.mlp(n))

    def value(self, h: torch.Tensor) -> torch.Tensor:
        attn = self.block.attn
        width = attn.embed_dim
        # in_proj stacks [W_q; W_k; W_v]; reading it here also picks up a LoRA parametrization.
        bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:]
        return F.linear(h, attn.in_proj_weight[2 * width:], bias)

    def output_projection(self, t: torch.Tensor) -> torch.Tensor:
        return self.block.attn.out_proj(t)

    def forward(self, q_x: torch.Tensor, k_x: Optional[torch.Tensor] = None, v_x: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("OpenClipInjectedBlock: only self-attention is supported (k_x and v_x must be None)")
        block = self.block
        return self._forward(q_x, lambda h: block.ls_1(block.attention(q_x=h, attn_mask=attn_mask)))


class TimmInjectedBlock(InjectedBlock):
    """Wraps a timm `vision_transformer.Block` (fused qkv Linear, optional q/k norms and layer scale)."""

    @property
    def width(self) -> int:
        return self.block.attn.qkv.in_features

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.norm1(x)

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.norm2(x)

    def mlp_branch(self, n: torch.Tensor) -> torch.Tensor:
        return self.block.drop_path2(self.block.ls2(self.block.mlp(n)))

    def value(self, h: torch.Tensor) -> torch.Tensor:
        qkv = self.block.attn.qkv
        width = qkv.out_features // 3
        bias = None if qkv.bias is None else qkv.bias[2 * width:]
        return F.linear(h, qkv.weight[2 * width:], bias)

    def output_projection(self, t: torch.Tensor) -> torch.Tensor:
        return self.block.attn.proj(self.block.attn.norm(t))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        block = self.block
        return self._forward(
            x, lambda h: block.drop_path1(block.ls1(block.attn(h, attn_mask=attn_mask, is_causal=is_causal)))
        )


class _Tower:
    """Where one library keeps the parts `inject` needs; `trunk` is the module whose output is
    the token sequence leaving the last block (before any final norm or pooling)."""

    def __init__(self, visual: nn.Module) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer as OpenClipViT
        from timm.models.vision_transformer import Block, VisionTransformer as TimmViT

        trunk = getattr(visual, "trunk", None)  # open_clip's TimmModel keeps the timm ViT as .trunk
        if isinstance(visual, OpenClipViT):
            if not visual.transformer.batch_first:
                raise ValueError("inject: the open_clip VisionTransformer must be batch-first")
            self.owner, self.conv_name = visual, "conv1"
            self.blocks = visual.transformer.resblocks
            self.trunk = visual.transformer
            self.block_type, self.wrapper = ResidualAttentionBlock, OpenClipInjectedBlock
            self.grid = tuple(visual.grid_size)
            self.has_class_token = getattr(visual, "class_embedding", None) is not None
            self.num_prefix_tokens = int(self.has_class_token)
            self.qkv_owner = lambda block: (block.attn, "in_proj_weight")
            self.out_owner = lambda block: (block.attn.out_proj, "weight")
        elif isinstance(visual, TimmViT) or isinstance(trunk, TimmViT):
            vit = visual if isinstance(visual, TimmViT) else trunk
            self.owner, self.conv_name = vit.patch_embed, "proj"
            self.blocks = vit.blocks
            self.trunk = vit.blocks
            self.block_type, self.wrapper = Block, TimmInjectedBlock
            self.grid = tuple(vit.patch_embed.grid_size)
            self.has_class_token = vit.cls_token is not None
            self.num_prefix_tokens = vit.num_prefix_tokens
            self.qkv_owner = lambda block: (block.attn.qkv, "weight")
            self.out_owner = lambda block: (block.attn.proj, "weight")
        else:
            raise ValueError(
                "inject: visual must be an open_clip VisionTransformer or a timm VisionTransformer, "
                f"got {type(visual).__name__}"
            )

    def block(self, index: int, *, create: bool) -> nn.Module:
        """The block at `index`; with `create`, wrapped in an InjectedBlock (once) first."""
        block = self.blocks[index]
        if isinstance(block, InjectedBlock) or not create:
            return block
        if type(block) is not self.block_type:
            raise ValueError(f"inject: block {index} is a {type(block).__name__}, expected {self.block_type.__name__}")
        wrapped = self.wrapper(block)
        self.blocks[index] = wrapped
        return wrapped

    @staticmethod
    def frozen_block(block: nn.Module) -> nn.Module:
        return block.block if isinstance(block, InjectedBlock) else block


def _options(kind: str, given: Mapping[str, Any], allowed: set) -> Dict[str, Any]:
    if not isinstance(given, Mapping):
        raise ValueError(f"inject: {kind} must be a dict of options or None, got {type(given).__name__}")
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(f"inject: unknown {kind} options {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(given)


def _inject_tokenization(tower: _Tower, options: Dict[str, Any]) -> None:
    conv = getattr(tower.owner, tower.conv_name)
    if isinstance(conv, SubKernelPatchEmbed):
        raise ValueError("inject: tokenization is already injected (the patch embedding is a SubKernelPatchEmbed)")
    setattr(tower.owner, tower.conv_name, SubKernelPatchEmbed.from_conv(conv, **options))


def _inject_domain_attention(tower: _Tower, options: Dict[str, Any]) -> None:
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


def _inject_adapter(tower: _Tower, options: Dict[str, Any]) -> None:
    kind = options.get("kind")
    if kind not in ADAPTER_OPTIONS:
        raise ValueError(f"inject: adapter kind must be one of {sorted(ADAPTER_OPTIONS)}, got {kind!r}")
    options = _options(f"{kind} adapter", options, ADAPTER_OPTIONS[kind])
    options.pop("kind")
    if kind == "adaptformer":
        for index in range(len(tower.blocks)):
            block = tower.block(index, create=True)
            if block.adapter is not None:
                raise ValueError(f"inject: block {index} already has an adapter")
            reference = next(block.block.parameters())
            block.adapter = AdaptFormer(block.width, **options).to(reference.device, reference.dtype)
        return
    targets = tuple(options.pop("targets", ("q", "v", "out")))
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown or not targets:
        raise ValueError(f"inject: LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {targets}")
    qkv_targets = [LORA_TARGETS.index(t) for t in targets if t != "out"]
    for index in range(len(tower.blocks)):
        frozen = tower.frozen_block(tower.block(index, create=False))
        if qkv_targets:
            add_lora(*tower.qkv_owner(frozen), num_blocks=3, targets=qkv_targets, **options)
        if "out" in targets:
            add_lora(*tower.out_owner(frozen), **options)


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
    domain_attention=dict(block=None, num_maps=10): a `lowres_kernels.nn.DomainAttention` in block
        `block` (None = len(blocks) // 2), fed with that block's value projection of its normed
        input, projected by its attention's output projection and added to the residual stream
        right after the block's attention branch.
    adapter=dict(kind="adaptformer", bottleneck=2, scale=0.1) in every block, or
        dict(kind="lora", rank=8, alpha=None, targets=("q", "v", "out")) on every block's attention
        projections (alpha=None means alpha = rank).

    Everything that was in `visual` before stays frozen; only the injected parameters train. With
    blend=0, AdaptFormer's up projection / LoRA's B at zero and domain attention alpha=0 the
    injected model computes exactly what the frozen one does.
    """
    tower = _Tower(visual)
    freeze(visual)
    if tokenization is not None:
        _inject_tokenization(tower, _options("tokenization", tokenization, TOKENIZATION_OPTIONS))
    if domain_attention is not None:
        _inject_domain_attention(tower, _options("domain_attention", domain_attention, DOMAIN_ATTENTION_OPTIONS))
    if adapter is not None:
        _inject_adapter(tower, _options("adapter", adapter, set().union(*ADAPTER_OPTIONS.values())))
    return visual
