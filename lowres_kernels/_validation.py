"""Argument checks shared by every backend, so each wrong input fails the same clear way.

The C++ kernels repeat these checks (with the same wording) for callers of torch.ops.lowres.* directly.
Shape and dtype problems raise ValueError; tensors on different devices raise RuntimeError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

POOLS = ("max", "avg")
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _check_tensor(op: str, name: str, t, ref_name: str, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be a floating tensor (float64/32/16, bfloat16), got {t.dtype}")
    if t is not ref and t.dtype != ref.dtype:
        raise ValueError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
    if t is not ref and t.device != ref.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; they must be on one device")


def check_int(op: str, name: str, value, *, least: int) -> None:
    """An int option (not a bool) of at least `least` (0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "positive" if least == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be a {kind} int, got {value!r}")


def check_backward_grad(op: str, grad, ref_name: str, ref: torch.Tensor, shape) -> None:
    """The incoming gradient of a backward op: `ref`'s dtype and device, the forward output's shape."""
    _check_tensor(op, "grad", grad, ref_name, ref)
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{op}: grad must be {list(shape)}, got {list(grad.shape)}")


@dataclass(frozen=True)
class SubkernelGeometry:
    """Sizes derived from the inputs of subkernel_tokenize."""

    patch: int  # q: the frozen kernel's size and stride
    sub: int  # u: sub-kernel size and stride
    step: int  # offset between neighbouring sub-kernels
    per_side: int  # n, with T = n * n sub-kernels
    ratio: int  # r = q / u: pooling window over the fine (H/u) map
    grid_h: int  # H / q
    grid_w: int  # W / q


def check_subkernel_options(
    op: str,
    q: int,
    sub: int,
    step: int,
    num_subkernels: int,
    pool: str,
    blend: float,
    weight: Optional[torch.Tensor] = None,
) -> tuple[int, int]:
    """Validates the options of sub-kernel tokenization against a q x q patch filter and T =
    num_subkernels sub-kernels (also at module construction, before any input exists); returns
    (n, r): the sub-kernels per side and the pooling window. `weight`, when given, is named in
    the messages."""
    # Not math.isqrt: under torch.compile(dynamic=True) T is symbolic, which isqrt does not take.
    # The float root is exact for perfect squares (below 2^52); the check below catches the rest.
    per_side = round(num_subkernels ** 0.5)
    if per_side * per_side != num_subkernels:
        raise ValueError(f"{op}: logits must have a square number T = n*n of entries, got T = {num_subkernels}")
    check_int(op, "sub", sub, least=1)
    check_int(op, "step", step, least=1)
    if sub > q or q % sub != 0:
        where = "" if weight is None else f" (weight {_shape(weight)})"
        raise ValueError(f"{op}: sub={sub} must divide the kernel size q={q}{where}")
    if (per_side - 1) * step >= q:
        raise ValueError(
            f"{op}: with T={num_subkernels} sub-kernels ({per_side} per side) and step={step} the last "
            f"offset {(per_side - 1) * step} falls outside the kernel of size q={q}"
        )
    if pool not in POOLS:
        raise ValueError(f"{op}: pool must be one of {POOLS}, got {pool!r}")
    if not isinstance(blend, (int, float)) or isinstance(blend, bool) or not math.isfinite(blend):
        raise ValueError(f"{op}: blend must be a finite number, got {blend!r}")
    ratio = q // sub
    if ratio * ratio > 255:
        raise ValueError(f"{op}: the pooling window q/sub={ratio} is too large (at most 15)")
    return per_side, ratio


def check_subkernel_tokenize(
    x: torch.Tensor,
    weight: torch.Tensor,
    logits: torch.Tensor,
    bias: Optional[torch.Tensor],
    sub: int,
    step: int,
    pool: str,
    blend: float,
) -> SubkernelGeometry:
    op = "subkernel_tokenize"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: x must be a tensor, got {type(x).__name__}")
    _check_tensor(op, "x", x, "x", x)
    _check_tensor(op, "weight", weight, "x", x)
    _check_tensor(op, "logits", logits, "x", x)
    if bias is not None:
        _check_tensor(op, "bias", bias, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be [B, C, H, W], got shape {_shape(x)}")
    if weight.dim() != 4:
        raise ValueError(f"{op}: weight must be [D, C, q, q], got shape {_shape(weight)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: weight has {weight.shape[1]} input channels but x has {x.shape[1]} "
            f"(weight {_shape(weight)}, x {_shape(x)})"
        )
    q = weight.shape[2]
    if weight.shape[3] != q or q < 1:
        raise ValueError(f"{op}: weight must have a square kernel [D, C, q, q], got shape {_shape(weight)}")
    if logits.dim() != 1 or logits.numel() < 1:
        raise ValueError(f"{op}: logits must be a vector [T] with T = n*n, got shape {_shape(logits)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"{op}: bias must be [D] = [{weight.shape[0]}], got shape {_shape(bias)}")
    per_side, ratio = check_subkernel_options(op, q, sub, step, logits.numel(), pool, blend, weight)
    height, width = x.shape[2], x.shape[3]
    if height % q != 0 or width % q != 0:
        raise ValueError(f"{op}: the image size {height}x{width} of x {_shape(x)} must be a multiple of q={q}")
    return SubkernelGeometry(q, sub, step, per_side, ratio, height // q, width // q)


def check_domain_attention(
    v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, num_prefix_tokens: int
) -> int:
    """Validates the inputs of domain_attention and returns the grid size h."""
    op = "domain_attention"
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{op}: v must be a tensor, got {type(v).__name__}")
    _check_tensor(op, "v", v, "v", v)
    _check_tensor(op, "maps", maps, "v", v)
    _check_tensor(op, "mix_logits", mix_logits, "v", v)
    if v.dim() != 3:
        raise ValueError(f"{op}: v must be [B, N, Dv], got shape {_shape(v)}")
    if maps.dim() != 3 or maps.shape[1] != maps.shape[2] or maps.shape[1] % 2 != 0 or maps.shape[1] == 0:
        raise ValueError(f"{op}: maps must be [C, 2h, 2h] (square, even side), got shape {_shape(maps)}")
    if maps.shape[0] < 1:
        raise ValueError(f"{op}: maps must hold at least one map, got shape {_shape(maps)}")
    if mix_logits.dim() != 1 or mix_logits.shape[0] != maps.shape[0]:
        raise ValueError(
            f"{op}: mix_logits must be [C] = [{maps.shape[0]}] (one per map), got shape {_shape(mix_logits)}"
        )
    check_int(op, "num_prefix_tokens", num_prefix_tokens, least=0)
    h = maps.shape[1] // 2
    if v.shape[1] != num_prefix_tokens + h * h:
        raise ValueError(
            f"{op}: v has N={v.shape[1]} tokens but maps {_shape(maps)} describe a {h}x{h} grid, which with "
            f"num_prefix_tokens={num_prefix_tokens} needs N={num_prefix_tokens + h * h}"
        )
    return h
