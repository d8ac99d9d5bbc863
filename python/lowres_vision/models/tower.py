"""`Tower`: where open_clip and timm ViTs keep their parts, and the `InjectedBlock` wrappers that add
domain attention and an adapter to a frozen block without copying or monkeypatching it.

Supported towers: open_clip's `VisionTransformer` (blocks are `ResidualAttentionBlock`), timm's
`VisionTransformer` (blocks are `Block`, any number of class/register prefix tokens), and open_clip
towers whose trunk is a timm ViT (`TimmModel.trunk`). A wrapped block keeps the original as
`.block`, so `state_dict` keys of the frozen weights only gain a `.block` level.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowres_kernels.nn import DomainAttention


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


class Tower:
    """Where one library keeps the parts of a ViT that `inject`, the adapters and `LowresModel` need.

    `owner.<conv_name>` is the patch-embedding conv, `blocks` the transformer blocks, `trunk` the
    module whose output is the token sequence leaving the last block (before any final norm or
    pooling), `grid` the patch grid, `num_prefix_tokens` the class and register tokens before the
    patch tokens; `qkv_owner(block)` / `out_owner(block)` give (module, weight name) of a frozen
    block's fused q/k/v and output projections.
    """

    def __init__(self, visual: nn.Module) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer as OpenClipViT
        from timm.models.vision_transformer import Block, VisionTransformer as TimmViT

        trunk = getattr(visual, "trunk", None)  # open_clip's TimmModel keeps the timm ViT as .trunk
        if isinstance(visual, OpenClipViT):
            if not visual.transformer.batch_first:
                raise ValueError("the open_clip VisionTransformer must be batch-first")
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
            no_class_token = not any(hasattr(visual, name) for name in ("cls_token", "class_embedding"))
            raise ValueError(
                "the vision tower must be an open_clip VisionTransformer or a timm VisionTransformer, "
                f"got {type(visual).__name__}" + ("; it has no class token, which the heads read" if no_class_token else "")
            )

    def block(self, index: int, *, create: bool) -> nn.Module:
        """The block at `index`; with `create`, wrapped in an InjectedBlock (once) first."""
        block = self.blocks[index]
        if isinstance(block, InjectedBlock) or not create:
            return block
        if type(block) is not self.block_type:
            raise ValueError(f"block {index} is a {type(block).__name__}, expected {self.block_type.__name__}")
        wrapped = self.wrapper(block)
        self.blocks[index] = wrapped
        return wrapped

    @staticmethod
    def frozen_block(block: nn.Module) -> nn.Module:
        return block.block if isinstance(block, InjectedBlock) else block
