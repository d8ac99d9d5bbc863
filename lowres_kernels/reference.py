"""Naive oracles that follow the authors' release literally.

They are the correctness reference every backend is tested against and the "naive" peer in
bench/, never the implementation: tokenization runs T separate convolutions and stacks a
[B, T, D, H/u, W/u] tensor; domain attention builds every map's attention matrix from h*h
per-token crops and applies each map separately. Same signatures as lowres_kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._validation import check_domain_attention, check_subkernel_tokenize


def subkernel_tokenize(
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
    geom = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend)
    n, q = geom.per_side, geom.patch
    # Sub-kernels that run past the kernel edge are zero-padded to sub x sub.
    overhang = max(0, (n - 1) * step + sub - q)
    padded = F.pad(weight, (0, overhang, 0, overhang))
    sub_maps = [
        F.conv2d(x, padded[:, :, a * step : a * step + sub, b * step : b * step + sub], stride=sub)
        for a in range(n)
        for b in range(n)
    ]
    stacked = torch.stack(sub_maps, dim=1)  # [B, T, D, H/u, W/u]
    alpha = torch.softmax(logits, dim=0)
    mixed = (alpha.view(1, -1, 1, 1, 1) * stacked).sum(dim=1)
    pool_fn = F.max_pool2d if pool == "max" else F.avg_pool2d
    out = pool_fn(mixed, geom.ratio, geom.ratio)
    if blend != 1.0:
        out = blend * out + (1.0 - blend) * F.conv2d(x, weight, stride=q)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def domain_attention(
    v: torch.Tensor,
    maps: torch.Tensor,
    mix_logits: torch.Tensor,
    *,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    num_tokens = v.shape[1]
    weights = torch.softmax(mix_logits, dim=0)
    prefix_logits = maps.new_zeros(num_prefix_tokens)
    out = torch.zeros_like(v)
    for c in range(maps.shape[0]):
        rows = [maps.new_zeros(num_tokens) for _ in range(num_prefix_tokens)]  # prefix rows: uniform
        for i in range(h):
            for j in range(h):
                # Token (i, j) attends to (k, l) with logit M_c[h - i + k, h - j + l]:
                # the h x h crop with top-left corner (h - i, h - j), row-major.
                crop = maps[c, h - i : 2 * h - i, h - j : 2 * h - j].reshape(-1)
                rows.append(torch.cat([prefix_logits, crop]))
        attention = torch.softmax(torch.stack(rows), dim=-1)  # [N, N]
        out = out + weights[c] * torch.matmul(attention, v)
    return out
