"""The peers our kernels are measured against, in one place.

"Stock" peers are what a strong engineer writes with stock PyTorch and no custom kernels,
using the same algebra our kernels use (docs/ops.md), so a win over them is a win of the
kernels, not of the maths:

- tokenization: mix the T sub-kernels into one u x u kernel, then one `F.conv2d` (stride u)
  and `F.max_pool2d` / `F.avg_pool2d` to the token grid;
- domain attention: gather every map's logits from its Toeplitz structure, mix the C
  softmaxes into one N x N matrix P, then either `P @ v` or `F.scaled_dot_product_attention`
  / FlexAttention with the mixed bias log(P) (softmax(log P) = P, since P's rows sum to one).

"Floor" peers are the work the op cannot avoid: its main GEMM as one plain matrix multiply
(forward, and the backward GEMMs of the inputs that need gradients), and for avg pooling the
frozen patch embedding alone (the op folds into one q x q conv there).

bench/test_peers_parity.py checks every stock peer against `lowres_kernels.reference`, so a
wrong peer cannot flatter us.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def mixed_subkernel(weight: torch.Tensor, logits: torch.Tensor, *, sub: int, step: int) -> torch.Tensor:
    """K_eff = sum_t softmax(logits)_t k_t, a [D, C, sub, sub] kernel (sub-kernels zero-padded past the edge)."""
    per_side = math.isqrt(logits.numel())
    patch = weight.shape[-1]
    overhang = max(0, (per_side - 1) * step + sub - patch)
    padded = F.pad(weight, (0, overhang, 0, overhang))
    # [D, C, windows, windows, sub, sub]: every sub x sub window at offsets `step` apart.
    windows = padded.unfold(2, sub, step).unfold(3, sub, step)[:, :, :per_side, :per_side]
    alpha = torch.softmax(logits, dim=0).view(per_side, per_side)
    return torch.einsum("dcabij,ab->dcij", windows, alpha)


def stock_subkernel_tokenize(
    x: torch.Tensor,
    weight: torch.Tensor,
    logits: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    sub: int = 7,
    step: int = 2,
    pool: str = "max",
    blend: float = 1.0,
) -> torch.Tensor:
    """Sub-kernel tokenization as one mixed-kernel conv plus a pool (no T-way intermediate)."""
    patch = weight.shape[-1]
    fine = F.conv2d(x, mixed_subkernel(weight, logits, sub=sub, step=step), stride=sub)
    pool_fn = F.max_pool2d if pool == "max" else F.avg_pool2d
    out = pool_fn(fine, patch // sub)
    if blend != 1.0:
        out = blend * out + (1.0 - blend) * F.conv2d(x, weight, stride=patch)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _toeplitz_index(grid: int, device: torch.device) -> torch.Tensor:
    """[h*h, h*h] flat indices into a 2h x 2h map: patch (i, j) -> (k, l) reads M[h - i + k, h - j + l].

    Built per call (tens of microseconds) rather than cached, so torch.compile traces it into the gather.
    """
    i = torch.arange(grid, device=device)
    rows = (grid - i.view(-1, 1, 1, 1) + i.view(1, 1, -1, 1)).expand(grid, grid, grid, grid)
    cols = (grid - i.view(1, -1, 1, 1) + i.view(1, 1, 1, -1)).expand(grid, grid, grid, grid)
    return (rows * (2 * grid) + cols).reshape(grid * grid, grid * grid)


def mixed_attention(maps: torch.Tensor, mix_logits: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """P = sum_c softmax(r)_c softmax(A_c), [N, N]; prefix tokens have logit 0 in their rows and columns."""
    num_maps, side = maps.shape[0], maps.shape[1]
    grid = side // 2
    patch_logits = maps.reshape(num_maps, -1)[:, _toeplitz_index(grid, maps.device)]  # [C, h*h, h*h]
    logits = F.pad(patch_logits, (num_prefix_tokens, 0, num_prefix_tokens, 0))  # zeros for prefix rows/cols
    weights = torch.softmax(mix_logits, dim=0)
    return torch.einsum("c,cnm->nm", weights, torch.softmax(logits, dim=-1))


def stock_domain_attention_matmul(
    v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, *, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """P @ v with P built by a gather and C softmaxes."""
    return torch.matmul(mixed_attention(maps, mix_logits, num_prefix_tokens), v)


def _as_heads(v: torch.Tensor, head_dim: int) -> torch.Tensor:
    # P is shared by every head, so any split of the width into heads computes the same P @ v;
    # the fused attention kernels want modest head dims.
    batch, tokens, width = v.shape
    return v.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)


def _head_dim(width: int) -> int:
    for head_dim in (128, 80, 64, 32, 16, 8):
        if width % head_dim == 0:
            return head_dim
    return width


def stock_domain_attention_sdpa(
    v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, *, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with zero queries/keys and the mixed bias log(P)."""
    bias = torch.log(mixed_attention(maps, mix_logits, num_prefix_tokens))
    heads = _as_heads(v, _head_dim(v.shape[-1]))
    zeros = heads.new_zeros(heads.shape)
    out = F.scaled_dot_product_attention(zeros, zeros, heads, attn_mask=bias)
    return out.transpose(1, 2).reshape(v.shape)


def stock_domain_attention_flex(
    v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, *, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """FlexAttention with zero queries/keys and a `score_mod` that adds the mixed bias log(P).

    Fast only under torch.compile; torch 2.14 has no FlexAttention backward on CPU.
    """
    from torch.nn.attention.flex_attention import flex_attention

    bias = torch.log(mixed_attention(maps, mix_logits, num_prefix_tokens))

    def add_bias(score, batch, head, query, key):
        return score + bias[query, key]

    heads = _as_heads(v, _head_dim(v.shape[-1]))
    zeros = heads.new_zeros(heads.shape)
    out = flex_attention(zeros, zeros, heads, score_mod=add_bias)
    return out.transpose(1, 2).reshape(v.shape)


def floor_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One plain matrix multiply: the floor for an op whose main GEMM has this shape."""
    return torch.matmul(a, b)


def floor_patch_embed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The frozen q x q, stride-q patch embedding: what tokenization with avg pooling can cost at best."""
    return F.conv2d(x, weight, stride=weight.shape[-1])
