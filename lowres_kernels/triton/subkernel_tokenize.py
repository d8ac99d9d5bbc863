"""subkernel_tokenize in Triton (docs/ops.md).

The T sub-kernel convolutions are one u x u, stride-u convolution with the combined filter
K_eff = sum_t softmax(logits)_t k_t (the ops are linear), formed with torch ops on the tiny
[D, C, q, q] weight. The main kernel is a tiled GEMM (tokens x output channels) with implicit
im2col: it loads image pixels at computed offsets, runs the r x r fine positions of each
token's pooling window one after another and keeps their running max and argmax, so only the
pooled tokens (and the argmax, for the backward) reach memory. With pool="avg" the op is one
q x q, stride-q convolution with a folded filter, the same GEMM without the window loop.

Backward: dx is a GEMM of the routed gradient with the filters, written straight to the
pixels (patches do not overlap, so each pixel is written once); dK_eff and the patch-filter
gradient are GEMMs of the routed gradient against implicit-im2col patches, the token
reduction split across programs; dlogits follows from dK_eff by the softmax Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._validation import SubkernelGeometry, check_backward_grad, check_subkernel_tokenize
from .._registration import register_subkernel_tokenize
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
def _token_origins(tokens, grid_h, grid_w, C, H, W, PATCH: tl.constexpr):
    """Offset of each token's top-left pixel (channel 0) in x, and of its first output element."""
    per_image = grid_h * grid_w
    image = (tokens // per_image).to(tl.int64)
    cell = tokens % per_image
    pixel = image * C * H * W + (cell // grid_w) * PATCH * W + (cell % grid_w) * PATCH
    return pixel, image, cell


@triton.jit
def _patch_offsets(ks, H, W, SIZE: tl.constexpr):
    """Offset in x of element k = (c, i, j) of a SIZE x SIZE patch, relative to its top-left pixel."""
    return (ks // (SIZE * SIZE)) * H * W + ((ks // SIZE) % SIZE) * W + ks % SIZE


@triton.autotune(key=["num_tokens", "D", "C", "SUB", "RATIO", "HAS_FINE", "HAS_PATCH"], **MATMUL_AUTOTUNE)
@triton.jit
def _tokenize_forward_kernel(
    x_ptr, fine_ptr, patch_ptr, bias_ptr, blend_ptr, out_ptr, indices_ptr,
    num_tokens, C, H, W, D, grid_h, grid_w,
    SUB: tl.constexpr, RATIO: tl.constexpr,
    HAS_FINE: tl.constexpr, HAS_PATCH: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """tokens[b, d, I, J] = blend * max over the window of (x * K_eff) + (x * K_patch) + bias.

    fine_ptr: K_eff [D, C*SUB*SUB]; patch_ptr: the q x q filter [D, C*q*q] (the folded filter
    for avg pooling, (1 - blend) K for max pooling with blend != 1). Rows of the GEMM are tokens,
    columns output channels.
    """
    PATCH: tl.constexpr = SUB * RATIO
    tokens = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    channels = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    token_ok = tokens < num_tokens
    channel_ok = channels < D
    pixel, image, cell = _token_origins(tokens, grid_h, grid_w, C, H, W, PATCH)

    result = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
    if HAS_FINE:
        fine_k = C * SUB * SUB
        best = tl.full([BLOCK_M, BLOCK_N], float("-inf"), ACC_DTYPE)
        arg = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for w in range(RATIO * RATIO):
            window = (w // RATIO) * SUB * W + (w % RATIO) * SUB
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
            for k0 in range(0, fine_k, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < fine_k
                offsets = pixel[:, None] + window + _patch_offsets(ks, H, W, SUB)[None, :]
                a = tl.load(x_ptr + offsets, mask=token_ok[:, None] & k_ok[None, :], other=0.0)
                filter_tile = tl.load(
                    fine_ptr + channels[None, :] * fine_k + ks[:, None],
                    mask=k_ok[:, None] & channel_ok[None, :],
                    other=0.0,
                )
                acc = mma(acc, a, filter_tile, FMA_DOT, WIDEN_DOT)
            # First maximum wins; a NaN wins and stays, as in max_pool2d.
            take = ((acc > best) | (acc != acc)) & (best == best)
            best = tl.where(take, acc, best)
            arg = tl.where(take, w, arg)
        result += tl.load(blend_ptr).to(ACC_DTYPE) * best
    if HAS_PATCH:
        patch_k = C * PATCH * PATCH
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
        for k0 in range(0, patch_k, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < patch_k
            offsets = pixel[:, None] + _patch_offsets(ks, H, W, PATCH)[None, :]
            a = tl.load(x_ptr + offsets, mask=token_ok[:, None] & k_ok[None, :], other=0.0)
            filter_tile = tl.load(
                patch_ptr + channels[None, :] * patch_k + ks[:, None],
                mask=k_ok[:, None] & channel_ok[None, :],
                other=0.0,
            )
            acc = mma(acc, a, filter_tile, FMA_DOT, WIDEN_DOT)
        result += acc
    if HAS_BIAS:
        result += tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(ACC_DTYPE)[None, :]

    per_image = grid_h * grid_w
    out_offsets = (image * D * per_image + cell)[:, None] + channels[None, :] * per_image
    out_mask = token_ok[:, None] & channel_ok[None, :]
    tl.store(out_ptr + out_offsets, result.to(out_ptr.dtype.element_ty), mask=out_mask)
    if HAS_FINE:
        tl.store(indices_ptr + out_offsets, arg.to(tl.uint8), mask=out_mask)


@triton.autotune(key=["num_tokens", "D", "C", "SUB", "RATIO", "HAS_FINE", "HAS_PATCH"], **MATMUL_AUTOTUNE)
@triton.jit
def _tokenize_input_grad_kernel(
    grad_ptr, indices_ptr, fine_ptr, patch_ptr, dx_ptr,
    num_tokens, C, H, W, D, grid_h, grid_w,
    SUB: tl.constexpr, RATIO: tl.constexpr, HAS_FINE: tl.constexpr, HAS_PATCH: tl.constexpr,
    ACC_DTYPE: tl.constexpr, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dx of one block of tokens x one block of (c, i, j) in a fine patch, for each window position.

    dx[pixel] = sum_d routed_grad[d] blend K_eff[d, c, i, j] + grad[d] K_patch[d, c, y, x], where
    (y, x) is the pixel's place in the token's q x q patch. fine_ptr holds blend * K_eff. Every
    pixel lies in exactly one fine patch, so each is written once, without atomics.
    """
    PATCH: tl.constexpr = SUB * RATIO
    tokens = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    token_ok = tokens < num_tokens
    pixel, image, cell = _token_origins(tokens, grid_h, grid_w, C, H, W, PATCH)
    per_image = grid_h * grid_w
    grad_rows = image * D * per_image + cell

    fine_k = C * SUB * SUB
    patch_k = C * PATCH * PATCH
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < fine_k
    c = ks // (SUB * SUB)
    i = (ks // SUB) % SUB
    j = ks % SUB
    for w in range(RATIO * RATIO):
        di = w // RATIO
        dj = w % RATIO
        acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=ACC_DTYPE)
        for d0 in range(0, D, BLOCK_N):
            ds = d0 + tl.arange(0, BLOCK_N)
            d_ok = ds < D
            grad_offsets = grad_rows[:, None] + ds[None, :] * per_image
            grad_mask = token_ok[:, None] & d_ok[None, :]
            grad = tl.load(grad_ptr + grad_offsets, mask=grad_mask, other=0.0)
            filter_mask = d_ok[:, None] & k_ok[None, :]
            if HAS_FINE:
                routed = tl.load(indices_ptr + grad_offsets, mask=grad_mask, other=0).to(tl.int32)
                filter_tile = tl.load(fine_ptr + ds[:, None] * fine_k + ks[None, :], mask=filter_mask, other=0.0)
                acc = mma(acc, tl.where(routed == w, grad, tl.zeros_like(grad)), filter_tile, FMA_DOT, WIDEN_DOT)
            if HAS_PATCH:
                in_patch = c * PATCH * PATCH + (di * SUB + i) * PATCH + dj * SUB + j
                filter_tile = tl.load(patch_ptr + ds[:, None] * patch_k + in_patch[None, :], mask=filter_mask, other=0.0)
                acc = mma(acc, grad, filter_tile, FMA_DOT, WIDEN_DOT)
        offsets = pixel[:, None] + di * SUB * W + dj * SUB + _patch_offsets(ks, H, W, SUB)[None, :]
        tl.store(dx_ptr + offsets, acc.to(dx_ptr.dtype.element_ty), mask=token_ok[:, None] & k_ok[None, :])


@triton.autotune(key=["num_tokens", "D", "C", "SIZE", "RATIO", "ROUTED"], **MATMUL_AUTOTUNE)
@triton.jit
def _tokenize_filter_grad_kernel(
    grad_ptr, indices_ptr, x_ptr, partial_ptr,
    num_tokens, C, H, W, D, grid_h, grid_w,
    SIZE: tl.constexpr, RATIO: tl.constexpr, ROUTED: tl.constexpr,
    ACC_DTYPE: tl.constexpr, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """partial[s, d, k] = sum over the tokens of slice s and window positions w of
    grad_w[token, d] * patch_w[token, k], with SIZE x SIZE patches (k = (c, i, j)) at the RATIO x
    RATIO positions of each token. ROUTED: grad_w is the gradient where the argmax is w, else 0
    (the fine filter's gradient); otherwise RATIO = 1 and SIZE = q (the patch filter's gradient).
    """
    PATCH: tl.constexpr = SIZE * RATIO
    channels = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    channel_ok = channels < D
    kdim = C * SIZE * SIZE
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < kdim
    k_offsets = _patch_offsets(ks, H, W, SIZE)
    split = tl.program_id(2)
    tokens_per_split = tl.cdiv(tl.cdiv(num_tokens, BLOCK_M), tl.num_programs(2)) * BLOCK_M
    per_image = grid_h * grid_w

    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC_DTYPE)
    for m0 in range(split * tokens_per_split, (split + 1) * tokens_per_split, BLOCK_M):
        tokens = m0 + tl.arange(0, BLOCK_M)
        token_ok = tokens < num_tokens
        pixel, image, cell = _token_origins(tokens, grid_h, grid_w, C, H, W, PATCH)
        grad_offsets = (image * D * per_image + cell)[:, None] + channels[None, :] * per_image
        grad_mask = token_ok[:, None] & channel_ok[None, :]
        grad = tl.load(grad_ptr + grad_offsets, mask=grad_mask, other=0.0)
        if ROUTED:
            routed = tl.load(indices_ptr + grad_offsets, mask=grad_mask, other=0).to(tl.int32)
        for w in range(RATIO * RATIO):
            window = (w // RATIO) * SIZE * W + (w % RATIO) * SIZE
            a = tl.load(
                x_ptr + pixel[:, None] + window + k_offsets[None, :],
                mask=token_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if ROUTED:
                acc = mma(acc, tl.trans(tl.where(routed == w, grad, tl.zeros_like(grad))), a, FMA_DOT, WIDEN_DOT)
            else:
                acc = mma(acc, tl.trans(grad), a, FMA_DOT, WIDEN_DOT)
    out = partial_ptr + (split * D + channels[:, None]).to(tl.int64) * kdim + ks[None, :]
    tl.store(out, acc, mask=channel_ok[:, None] & k_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Host side: the filters from the [D, C, q, q] weight (tiny torch ops) and the launches.


def _subkernel_windows(weight: torch.Tensor, g: SubkernelGeometry) -> torch.Tensor:
    """The T sub-kernels as a view [D, C, n, n, u, u] of the kernel (zero-padded where the last
    sub-kernels overhang its edge): window (a, b) starts at pixel (a step, b step), t = a n + b.

    A strided view rather than F.unfold: on CUDA, unfold launches one im2col kernel per batch
    element, which for a [D*C, 1, q, q] kernel is D*C launches (3840 for ViT-H/14) per call.
    """
    span = (g.per_side - 1) * g.step + g.sub  # the extent the sub-kernels cover
    covered = F.pad(weight, (0, span - g.patch, 0, span - g.patch)) if span > g.patch else weight
    windows = covered.unfold(2, g.sub, g.step).unfold(3, g.sub, g.step)
    return windows[:, :, : g.per_side, : g.per_side]


def _subkernel_windows_adjoint(keff_grad: torch.Tensor, alpha: torch.Tensor, g: SubkernelGeometry) -> torch.Tensor:
    """dL/dK of K_eff = sum_t alpha_t window_t(K), given dL/dK_eff [D, C, u, u]: each window adds
    alpha_t dK_eff at its place, overlaps summed. One col2im (F.fold) over a single image whose
    channels are the D*C kernel planes: one launch, and deterministic (each pixel gathers its sum)."""
    D, C, q, u = keff_grad.shape[0], keff_grad.shape[1], g.patch, g.sub
    span = (g.per_side - 1) * g.step + u
    columns = keff_grad.reshape(1, D * C * u * u, 1) * alpha.view(1, 1, -1)
    summed = F.fold(columns, (span, span), u, stride=g.step).view(D, C, span, span)
    return summed[:, :, :q, :q] if span >= q else F.pad(summed, (0, q - span, 0, q - span))


@dataclass
class _Filters:
    """The filters one call multiplies with, in the accumulation dtype.

    fine  [D, C*u*u]: K_eff, with max pooling and blend != 0.
    patch [D, C*q*q]: (1 - blend) K with max pooling and blend != 1; with avg pooling the whole op
                      folded into one kernel, blend/r^2 tile(K_eff) + (1 - blend) K.
    """

    weight: torch.Tensor  # K [D, C, q, q]
    alpha: torch.Tensor  # softmax(logits) [T]
    windows: Optional[torch.Tensor]  # the sub-kernels, a view [D, C, n, n, u, u]; None when blend == 0
    fine: Optional[torch.Tensor]
    patch: Optional[torch.Tensor]


def _make_filters(
    weight: torch.Tensor, logits: torch.Tensor, g: SubkernelGeometry, pool: str, blend: float
) -> _Filters:
    acc = accumulate_dtype(weight.dtype)
    weight = weight.to(acc)
    alpha = torch.softmax(logits.to(acc), dim=0)
    D, C, u, r = weight.shape[0], weight.shape[1], g.sub, g.ratio
    plain = weight.reshape(D, -1)
    windows = keff = None
    if blend != 0.0:
        windows = _subkernel_windows(weight, g)
        keff = torch.einsum("dcabij,ab->dcij", windows, alpha.view(g.per_side, g.per_side)).reshape(D, C * u * u)
    if pool == "max":
        patch = plain * (1.0 - blend) if blend != 1.0 else None
        return _Filters(weight, alpha, windows, keff, patch)
    # avg_pool(conv_u(x, K_eff)) = conv_q(x, K_eff tiled r x r / r^2).
    if keff is None:
        folded = torch.zeros_like(plain)
    else:
        folded = keff.view(D, C, 1, u, 1, u).expand(D, C, r, u, r, u).reshape(D, -1) * (blend / (r * r))
    return _Filters(weight, alpha, windows, None, folded + plain * (1.0 - blend) if blend != 1.0 else folded)


def _forward(x, weight, logits, bias, g: SubkernelGeometry, pool: str, blend: float):
    B, C, H, W = x.shape
    D = weight.shape[0]
    out = x.new_empty((B, D, g.grid_h, g.grid_w))
    indices = x.new_zeros(out.shape if pool == "max" else (0,), dtype=torch.uint8)
    if out.numel() == 0:
        return out, indices
    filters = _make_filters(weight, logits, g, pool, blend)
    x = x.contiguous()
    fine = filters.fine.to(x.dtype).contiguous() if filters.fine is not None else None
    patch = filters.patch.to(x.dtype).contiguous() if filters.patch is not None else None
    bias = bias.contiguous() if bias is not None else None
    blend_value = torch.full((1,), blend, dtype=accumulate_dtype(x.dtype), device=x.device)
    num_tokens = B * g.grid_h * g.grid_w

    def grid(meta):
        return triton.cdiv(num_tokens, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_N"])

    with device_guard(x):
        # Unused pointer arguments get x; the kernel never reads them.
        _tokenize_forward_kernel[grid](
            x, x if fine is None else fine, x if patch is None else patch, x if bias is None else bias,
            blend_value, out, indices,
            num_tokens, C, H, W, D, g.grid_h, g.grid_w,
            SUB=g.sub, RATIO=g.ratio, HAS_FINE=fine is not None, HAS_PATCH=patch is not None,
            HAS_BIAS=bias is not None, **dot_flags(x.dtype),
        )  # fmt: skip
    return out, indices


def _filter_gradient(grad, indices, x, D: int, size: int, ratio: int) -> torch.Tensor:
    """The gradient of a [D, C*size*size] kernel: sum over tokens of grad x implicit-im2col patches,
    the gradient routed to each window's argmax when `indices` are given."""
    B, C, H, W = x.shape
    kdim = C * size * size
    num_tokens = grad.numel() // D
    output_tiles = triton.cdiv(D, NOMINAL_TILE) * triton.cdiv(kdim, NOMINAL_TILE)
    splits = reduction_splits(output_tiles, triton.cdiv(num_tokens, NOMINAL_TILE), x.device)
    partial = x.new_empty((splits, D, kdim), dtype=accumulate_dtype(x.dtype))

    def grid(meta):
        return triton.cdiv(D, meta["BLOCK_N"]), triton.cdiv(kdim, meta["BLOCK_K"]), splits

    _tokenize_filter_grad_kernel[grid](
        grad, grad if indices is None else indices, x, partial,
        num_tokens, C, H, W, D, grad.shape[2], grad.shape[3],
        SIZE=size, RATIO=ratio, ROUTED=indices is not None, **dot_flags(x.dtype),
    )  # fmt: skip
    return partial.sum(0)


def _backward(grad, x, weight, logits, indices, g: SubkernelGeometry, pool: str, blend: float, output_mask):
    want_x, want_weight, want_logits, want_bias = output_mask
    acc = accumulate_dtype(x.dtype)
    grad_x, grad_weight, grad_logits = not_requested(x), not_requested(weight), not_requested(logits)
    grad_bias = grad.to(acc).sum((0, 2, 3)).to(weight.dtype) if want_bias else not_requested(weight)
    if x.numel() == 0 or grad.numel() == 0 or not (want_x or want_weight or want_logits):
        grad_x = torch.zeros_like(x) if want_x else grad_x
        grad_weight = torch.zeros_like(weight) if want_weight else grad_weight
        grad_logits = torch.zeros_like(logits) if want_logits else grad_logits
        return grad_x, grad_weight, grad_logits, grad_bias

    filters = _make_filters(weight, logits, g, pool, blend)
    B, C, H, W = x.shape
    D, q, u, r = weight.shape[0], g.patch, g.sub, g.ratio
    x, grad = x.contiguous(), grad.contiguous()
    routing = indices.contiguous() if filters.fine is not None else None
    with device_guard(x):
        if want_x:
            grad_x = torch.empty_like(x)
            fine = (filters.fine * blend).to(x.dtype).contiguous() if filters.fine is not None else None
            patch = filters.patch.to(x.dtype).contiguous() if filters.patch is not None else None
            num_tokens = B * g.grid_h * g.grid_w

            def grid(meta):
                return triton.cdiv(num_tokens, meta["BLOCK_M"]), triton.cdiv(C * u * u, meta["BLOCK_K"])

            _tokenize_input_grad_kernel[grid](
                grad, grad if routing is None else routing, x if fine is None else fine,
                x if patch is None else patch, grad_x,
                num_tokens, C, H, W, D, g.grid_h, g.grid_w,
                SUB=u, RATIO=r, HAS_FINE=fine is not None, HAS_PATCH=patch is not None, **dot_flags(x.dtype),
            )  # fmt: skip
        if not (want_weight or want_logits):
            return grad_x, grad_weight, grad_logits, grad_bias
        fine_grad = _filter_gradient(grad, routing, x, D, u, r) * blend if routing is not None else None
        patch_grad = _filter_gradient(grad, None, x, D, q, 1) if filters.patch is not None else None

    # dL/dK_eff, and the part of dL/dK that bypasses the sub-filters.
    weight_grad = torch.zeros_like(filters.weight)
    if pool == "max":
        keff_grad = fine_grad
        if patch_grad is not None:
            weight_grad += patch_grad.view_as(weight_grad) * (1.0 - blend)
    else:
        keff_grad = None
        if blend != 0.0:
            keff_grad = patch_grad.view(D, C, r, u, r, u).sum((2, 4)).reshape(D, -1) * (blend / (r * r))
        if blend != 1.0:
            weight_grad += patch_grad.view_as(weight_grad) * (1.0 - blend)
    alpha = filters.alpha
    alpha_grad = torch.zeros_like(alpha)
    if keff_grad is not None:
        keff_grad = keff_grad.reshape(D, C, u, u)
        alpha_grad = torch.einsum("dcabij,dcij->ab", filters.windows, keff_grad).reshape(-1)  # <dK_eff, k_t>
        if want_weight:
            weight_grad += _subkernel_windows_adjoint(keff_grad, alpha, g)
    if want_weight:
        grad_weight = weight_grad.to(weight.dtype)
    if want_logits:
        # Softmax Jacobian: dlogits = alpha * (dalpha - <alpha, dalpha>).
        grad_logits = (alpha * (alpha_grad - (alpha * alpha_grad).sum())).to(logits.dtype)
    return grad_x, grad_weight, grad_logits, grad_bias


# ----------------------------------------------------------------------------------------------
# Registered ops.


@torch.library.custom_op("lowres_triton::subkernel_tokenize_with_indices", mutates_args=())
def subkernel_tokenize_with_indices(
    x: torch.Tensor,
    weight: torch.Tensor,
    logits: torch.Tensor,
    bias: Optional[torch.Tensor],
    sub: int,
    step: int,
    pool: str,
    blend: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, argmax within each pooling window as uint8; empty for pool="avg")."""
    g = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend)
    return _forward(x, weight, logits, bias, g, pool, blend)


@torch.library.custom_op("lowres_triton::_subkernel_tokenize_backward", mutates_args=())
def _subkernel_tokenize_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    logits: torch.Tensor,
    indices: torch.Tensor,
    sub: int,
    step: int,
    pool: str,
    blend: float,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dlogits, dbias); a gradient not asked for in output_mask is an empty tensor."""
    g = check_subkernel_tokenize(x, weight, logits, None, sub, step, pool, blend)
    check_backward_grad("subkernel_tokenize backward", grad, "x", x, (x.shape[0], weight.shape[0], g.grid_h, g.grid_w))
    return _backward(grad, x, weight, logits, indices, g, pool, blend, list(output_mask))


register_subkernel_tokenize(subkernel_tokenize_with_indices, _subkernel_tokenize_backward)
