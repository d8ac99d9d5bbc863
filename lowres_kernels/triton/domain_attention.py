"""domain_attention in Triton (docs/ops.md).

Forward: each program builds whole rows of the mixed attention P [N, N] = sum_c pi_c softmax(A_c)
(pi = softmax(mix_logits)) by gathering each map's crop (A_c is Toeplitz), then a batched
GEMM computes P @ v with P shared by the whole batch. Backward: dv = P^T dY (the same GEMM on
P transposed); dP = sum_b dY_b v_b^T (a GEMM reducing over batch and width, split across
programs); per patch row and map, the softmax backward gives dA_c; dmaps gathers dA_c along its
diagonals, each program whole rows of a map (no atomics, deterministic). P is rebuilt in the backward:
it costs N^2 C exponentials, far less than the GEMMs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .._validation import check_backward_grad, check_domain_attention
from .._registration import register_domain_attention
from ._common import (
    MATMUL_AUTOTUNE,
    NOMINAL_TILE,
    accumulate_dtype,
    device_guard,
    dot_flags,
    mma,
    not_requested,
    reduction_splits,
)


@triton.jit
def _rows_softmax(maps_ptr, c, rows, cols, h, num_prefix, N, ACC_DTYPE: tl.constexpr):
    """softmax(A_c[rows, :]) for rows [R, 1] and cols [1, BLOCK_N] (padding columns >= N get 0).

    A patch row (i, j) has logit maps[c, h - i + k, h - j + l] in patch column (k, l) and 0 in the
    prefix columns; a prefix row has 0 everywhere.
    """
    side = 2 * h
    patch = rows - num_prefix
    column = cols - num_prefix
    in_crop = (cols >= num_prefix) & (cols < N) & (rows >= num_prefix) & (rows < N)
    offsets = c * side * side + (h - patch // h + column // h) * side + (h - patch % h + column % h)
    logits = tl.load(maps_ptr + offsets, mask=in_crop, other=0.0).to(ACC_DTYPE)
    logits = tl.where(cols < N, logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _build_mixed_attention_kernel(
    maps_ptr, pi_ptr, p_ptr, num_maps, h, num_prefix, N,
    ACC_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """P[rows, :] = sum_c pi_c softmax(A_c[rows, :]) for a block of BLOCK_R whole rows."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=ACC_DTYPE)
    for c in range(num_maps):
        acc += tl.load(pi_ptr + c) * _rows_softmax(maps_ptr, c, rows, cols, h, num_prefix, N, ACC_DTYPE)
    tl.store(p_ptr + rows.to(tl.int64) * N + cols, acc, mask=(rows < N) & (cols < N))


@triton.autotune(key=["N", "Dv"], **MATMUL_AUTOTUNE)
@triton.jit
def _shared_matmul_kernel(
    a_ptr, v_ptr, out_ptr, N, Dv, stride_am, stride_ak,
    ACC_DTYPE: tl.constexpr, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[b] = A @ v[b] for an [N, N] matrix A (given by strides, so P or P^T) shared by the batch.

    v and out are contiguous [B, N, Dv]; A is kept in the accumulation dtype and rounded to v's
    dtype tile by tile for the multiplication, as attention probabilities are in flash-attention.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    batch = tl.program_id(2).to(tl.int64)
    row_ok = rows < N
    col_ok = cols < Dv
    v_batch = v_ptr + batch * N * Dv
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < N
        a_offsets = rows[:, None] * stride_am + ks[None, :] * stride_ak
        a = tl.load(a_ptr + a_offsets, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        v = tl.load(v_batch + ks[:, None] * Dv + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mma(acc, a.to(v.dtype), v, FMA_DOT, WIDEN_DOT)
    out = out_ptr + batch * N * Dv + rows[:, None] * Dv + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(key=["B", "N", "Dv"], **MATMUL_AUTOTUNE)
@triton.jit
def _attention_grad_kernel(
    grad_ptr, v_ptr, partial_ptr, B, N, Dv,
    ACC_DTYPE: tl.constexpr, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """partial[s] = sum over the batches b of slice s of grad[b] @ v[b]^T (tiles [BLOCK_M, BLOCK_N] of dP)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    batches_per_split = tl.cdiv(B, tl.num_programs(2))
    row_ok = rows < N
    col_ok = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
    for batch in range(split * batches_per_split, tl.minimum((split + 1) * batches_per_split, B)):
        base = tl.cast(batch, tl.int64) * N * Dv
        for k0 in range(0, Dv, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < Dv
            g_offsets = base + rows[:, None] * Dv + ks[None, :]
            g = tl.load(grad_ptr + g_offsets, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            vt_offsets = base + cols[None, :] * Dv + ks[:, None]
            vt = tl.load(v_ptr + vt_offsets, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = mma(acc, g, vt, FMA_DOT, WIDEN_DOT)
    out = partial_ptr + (split * N + rows[:, None]).to(tl.int64) * N + cols[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _softmax_backward_kernel(
    maps_ptr, pi_ptr, dp_ptr, da_ptr, dpi_ptr, num_maps, h, num_prefix, N,
    ACC_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """For a block of patch rows r and every map c, with S = softmax(A_c[prefix + r, :]):
    dpi[c, r] = <dP[row], S> and dA[c, r, patch columns] = pi_c S (dP[row] - <dP[row], S>)."""
    hh = h * h
    patches = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    patch_ok = patches < hh
    rows = (num_prefix + patches)[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
    dp = tl.load(dp_ptr + rows.to(tl.int64) * N + cols, mask=patch_ok[:, None] & (cols < N), other=0.0)
    da_mask = patch_ok[:, None] & (cols >= num_prefix) & (cols < N)
    for c in range(num_maps):
        s = _rows_softmax(maps_ptr, c, rows, cols, h, num_prefix, N, ACC_DTYPE)
        dot = tl.sum(dp * s, axis=1)
        tl.store(dpi_ptr + c * hh + patches, dot, mask=patch_ok)
        da = tl.load(pi_ptr + c) * s * (dp - dot[:, None])
        da_rows = (c * hh + patches[:, None]).to(tl.int64) * hh
        tl.store(da_ptr + da_rows + cols - num_prefix, da, mask=da_mask)


@triton.jit
def _gather_diagonals_kernel(
    da_ptr, dmaps_ptr, h,
    ACC_DTYPE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_X: tl.constexpr,
):  # fmt: skip
    """dmaps[c, y, x] = sum over (i, j) of dA[c, (i, j), (i + y - h, j + x - h)] for BLOCK_Y map rows.

    Map entry (y, x) is the logit of patch row (i, j) at column (k, l) = (i + y - h, j + x - h)
    whenever both lie in the grid, so each output is a gather along a diagonal of dA.
    """
    side = 2 * h
    hh = h * h
    y_blocks = tl.cdiv(side, BLOCK_Y)
    c = tl.program_id(0) // y_blocks
    ys = ((tl.program_id(0) % y_blocks) * BLOCK_Y + tl.arange(0, BLOCK_Y))[:, None, None]
    js = tl.arange(0, BLOCK_J)[None, :, None]
    xs = tl.arange(0, BLOCK_X)[None, None, :]
    ls = js + xs - h
    column_ok = (ys < side) & (js < h) & (xs < side) & (ls >= 0) & (ls < h)
    acc = tl.zeros([BLOCK_Y, BLOCK_J, BLOCK_X], dtype=ACC_DTYPE)
    for i in range(0, h):
        ks = i + ys - h
        rows = (c * hh + i * h + js).to(tl.int64)
        acc += tl.load(da_ptr + rows * hh + ks * h + ls, mask=column_ok & (ks >= 0) & (ks < h), other=0.0)
    out = tl.sum(acc, axis=1)
    ys = tl.reshape(ys, [BLOCK_Y, 1])
    xs = tl.reshape(xs, [1, BLOCK_X])
    tl.store(dmaps_ptr + (c * side + ys) * side + xs, out, mask=(ys < side) & (xs < side))


# Element budget of one program's tile in the row-wise kernels: whole rows, several per program
# when they are short.
_TILE_ELEMENTS = 4096


def _rows_per_program(row_length: int, num_rows: int) -> int:
    return max(1, min(triton.next_power_of_2(num_rows), _TILE_ELEMENTS // row_length))


# ----------------------------------------------------------------------------------------------
# Host side.


def _mixed_attention(maps: torch.Tensor, pi: torch.Tensor, h: int, num_prefix: int) -> torch.Tensor:
    N = num_prefix + h * h
    P = maps.new_empty((N, N), dtype=pi.dtype)
    block_n = triton.next_power_of_2(N)
    block_r = _rows_per_program(block_n, N)
    _build_mixed_attention_kernel[(triton.cdiv(N, block_r),)](
        maps, pi, P, maps.shape[0], h, num_prefix, N, ACC_DTYPE=dot_flags(maps.dtype)["ACC_DTYPE"],
        BLOCK_R=block_r, BLOCK_N=block_n,
    )  # fmt: skip
    return P


def _shared_matmul(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """a [N, N] (any strides) @ v[b] for every b."""
    B, N, Dv = v.shape
    out = torch.empty_like(v)

    def grid(meta):
        return triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(Dv, meta["BLOCK_N"]), B

    _shared_matmul_kernel[grid](a, v, out, N, Dv, a.stride(0), a.stride(1), **dot_flags(v.dtype))
    return out


def _forward(v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, h: int, num_prefix: int) -> torch.Tensor:
    if v.numel() == 0:
        return torch.empty_like(v, memory_format=torch.contiguous_format)
    v, maps = v.contiguous(), maps.contiguous()
    pi = torch.softmax(mix_logits.to(accumulate_dtype(v.dtype)), dim=0).contiguous()
    with device_guard(v):
        return _shared_matmul(_mixed_attention(maps, pi, h, num_prefix), v)


def _backward(grad, v, maps, mix_logits, h: int, num_prefix: int, output_mask):
    want_v, want_maps, want_mix = output_mask
    grad_v, grad_maps, grad_mix = not_requested(v), not_requested(maps), not_requested(mix_logits)
    if v.numel() == 0:
        grad_v = torch.zeros_like(v) if want_v else grad_v
        grad_maps = torch.zeros_like(maps) if want_maps else grad_maps
        grad_mix = torch.zeros_like(mix_logits) if want_mix else grad_mix
        return grad_v, grad_maps, grad_mix
    acc = accumulate_dtype(v.dtype)
    flags = dot_flags(v.dtype)
    v, maps, grad = v.contiguous(), maps.contiguous(), grad.contiguous()
    B, N, Dv = v.shape
    C, hh = maps.shape[0], h * h
    pi = torch.softmax(mix_logits.to(acc), dim=0).contiguous()
    with device_guard(v):
        P = _mixed_attention(maps, pi, h, num_prefix)
        if want_v:
            grad_v = _shared_matmul(P.t(), grad)
        if not (want_maps or want_mix):
            return grad_v, grad_maps, grad_mix

        splits = reduction_splits(triton.cdiv(N, NOMINAL_TILE) ** 2, B, v.device)
        partial = v.new_empty((splits, N, N), dtype=acc)

        def grid(meta):
            return triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]), splits

        _attention_grad_kernel[grid](grad, v, partial, B, N, Dv, **flags)
        grad_P = partial.sum(0)

        # Prefix rows are uniform whatever the maps: only patch rows carry gradient.
        grad_A = v.new_empty((C, hh, hh), dtype=acc)
        grad_pi_rows = v.new_empty((C, hh), dtype=acc)
        block_n = triton.next_power_of_2(N)
        block_r = _rows_per_program(block_n, hh)
        _softmax_backward_kernel[(triton.cdiv(hh, block_r),)](
            maps, pi, grad_P, grad_A, grad_pi_rows, C, h, num_prefix, N,
            ACC_DTYPE=flags["ACC_DTYPE"], BLOCK_R=block_r, BLOCK_N=block_n,
        )  # fmt: skip
        if want_maps:
            grad_maps_acc = v.new_empty(maps.shape, dtype=acc)
            block_j, block_x = triton.next_power_of_2(h), triton.next_power_of_2(2 * h)
            block_y = _rows_per_program(block_j * block_x, 2 * h)
            _gather_diagonals_kernel[(C * triton.cdiv(2 * h, block_y),)](
                grad_A, grad_maps_acc, h,
                ACC_DTYPE=flags["ACC_DTYPE"], BLOCK_Y=block_y, BLOCK_J=block_j, BLOCK_X=block_x,
            )  # fmt: skip
            grad_maps = grad_maps_acc.to(maps.dtype)
    if want_mix:
        grad_pi = grad_pi_rows.sum(1)
        grad_mix = (pi * (grad_pi - (pi * grad_pi).sum())).to(mix_logits.dtype)
    return grad_v, grad_maps, grad_mix


# ----------------------------------------------------------------------------------------------
# Registered ops.


@torch.library.custom_op("lowres_triton::domain_attention", mutates_args=())
def domain_attention(
    v: torch.Tensor, maps: torch.Tensor, mix_logits: torch.Tensor, num_prefix_tokens: int
) -> torch.Tensor:
    h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    return _forward(v, maps, mix_logits, h, num_prefix_tokens)


@torch.library.custom_op("lowres_triton::_domain_attention_backward", mutates_args=())
def _domain_attention_backward(
    grad: torch.Tensor,
    v: torch.Tensor,
    maps: torch.Tensor,
    mix_logits: torch.Tensor,
    num_prefix_tokens: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dv, dmaps, dmix_logits); a gradient not asked for in output_mask is an empty tensor."""
    h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    check_backward_grad("domain_attention backward", grad, "v", v, v.shape)
    return _backward(grad, v, maps, mix_logits, h, num_prefix_tokens, list(output_mask))


register_domain_attention(domain_attention, _domain_attention_backward)
