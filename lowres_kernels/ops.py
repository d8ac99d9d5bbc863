"""The functional entry points of both ops and their backend dispatch, and the registrations
(lowres_kernels/_registration.py) of the compiled ops `lowres::*` (csrc/lowres_ops.cpp).

Each entry point checks its arguments once, asks `_backend.resolve_backend` which implementation
runs, and calls it: the naive oracle (`reference`), the compiled op, or the Triton op of the same
name (`lowres_triton::*`, imported on first use so that importing lowres_kernels never imports
triton). What each op computes: docs/ops.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._autocast import autocast_off, float32_under_autocast
from ._backend import resolve_backend, triton_is_faster_for_tokenize
from ._registration import register_domain_attention, register_subkernel_tokenize
from ._validation import check_domain_attention, check_subkernel_tokenize

register_subkernel_tokenize(
    torch.ops.lowres.subkernel_tokenize_with_indices.default, torch.ops.lowres._subkernel_tokenize_backward.default
)
register_domain_attention(torch.ops.lowres.domain_attention.default, torch.ops.lowres._domain_attention_backward.default)


def _triton_ops():
    """torch.ops.lowres_triton, with its ops registered (importing triton on first use)."""
    from .triton import domain_attention, subkernel_tokenize  # noqa: F401

    return torch.ops.lowres_triton


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
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Sub-kernel tokenization (docs/ops.md).

    x [B, C, H, W], weight [D, C, q, q] (the frozen patch filter), logits [T] with T = n*n
    -> tokens [B, D, H/q, W/q]. The T sub-kernels of size `sub` at offsets `step` apart are
    softmax(logits)-mixed into one filter (the ops are linear), applied with stride `sub`,
    pooled ("max" as in the paper, "avg" as in the release) to the q-grid, and blended with
    the plain patch embedding: blend * pooled + (1 - blend) * conv(x, weight, stride=q) + bias.
    """
    x, weight, logits, bias = float32_under_autocast(x, weight, logits, bias)
    geometry = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend)

    def triton_measured_faster() -> bool:
        trains_only_logits = (
            torch.is_grad_enabled() and logits.requires_grad and not x.requires_grad and not weight.requires_grad
        )
        num_tokens = x.shape[0] * geometry.grid_h * geometry.grid_w
        return triton_is_faster_for_tokenize(num_tokens, pool, x.dtype, trains_only_logits)

    name = resolve_backend("subkernel_tokenize", backend, x.device, prefer_triton=triton_measured_faster)
    if name == "reference":
        with autocast_off(x.device.type):
            return reference.subkernel_tokenize(x, weight, logits, bias, sub=sub, step=step, pool=pool, blend=blend)
    ops = _triton_ops() if name == "triton" else torch.ops.lowres
    tokens, _ = ops.subkernel_tokenize_with_indices(x, weight, logits, bias, sub, step, pool, float(blend))
    return tokens


def domain_attention(
    v: torch.Tensor,
    maps: torch.Tensor,
    mix_logits: torch.Tensor,
    *,
    num_prefix_tokens: int = 1,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Global domain attention (docs/ops.md), without the output projection.

    v [B, N, Dv] with N = num_prefix_tokens + h*h, maps [C, 2h, 2h], mix_logits [C] -> P @ v,
    where P = sum_c softmax(mix_logits)_c softmax(A_c) and A_c[(i,j),(k,l)] = maps[c, h-i+k, h-j+l]
    for patch tokens (prefix tokens get logit 0 in their rows and columns). P is shared by the
    whole batch and every head.
    """
    v, maps, mix_logits = float32_under_autocast(v, maps, mix_logits)
    check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    name = resolve_backend("domain_attention", backend, v.device)
    if name == "reference":
        with autocast_off(v.device.type):
            return reference.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix_tokens)
    ops = _triton_ops() if name == "triton" else torch.ops.lowres
    return ops.domain_attention(v, maps, mix_logits, num_prefix_tokens)
