"""subkernel_tokenize: the functional entry point, its backend dispatch, and the autograd,
autocast and fake (meta) registrations of the compiled op `lowres::subkernel_tokenize_with_indices`."""

from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .._backend import resolve_backend, triton_is_faster_for_tokenize
from .._validation import check_subkernel_tokenize
from ._autocast import autocast_off, float32_under_autocast, register_float32_autocast


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
    """Sub-kernel tokenization of paper 000 Sec. 3.2 (SPEC §1).

    x [B, C, H, W], weight [D, C, q, q] (the frozen patch kernel), logits [T] with T = n*n
    -> tokens [B, D, H/q, W/q]. The T sub-kernels of size `sub` at offsets `step` apart are
    softmax(logits)-mixed into one kernel (the ops are linear), applied with stride `sub`,
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
    if name == "triton":
        from ..triton.subkernel_tokenize import subkernel_tokenize as triton_subkernel_tokenize

        return triton_subkernel_tokenize(x, weight, logits, bias, sub=sub, step=step, pool=pool, blend=blend)
    tokens, _ = torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, bias, sub, step, pool, float(blend))
    return tokens


def _tokens_fake(x, weight, logits, bias, sub, step, pool, blend):
    geom = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend)
    shape = (x.shape[0], weight.shape[0], geom.grid_h, geom.grid_w)
    tokens = x.new_empty(shape)
    indices = x.new_empty(shape if pool == "max" else (0,), dtype=torch.uint8)
    return tokens, indices


def _backward_fake(grad, x, weight, logits, indices, sub, step, pool, blend, output_mask):
    like = (x, weight, logits, weight.new_empty(weight.shape[0]))
    return tuple(t.new_empty(t.shape) if wanted else t.new_empty(0) for t, wanted in zip(like, output_mask))


def register_implementation(forward_op, backward_op) -> None:
    """Fake, autograd and autocast registrations of one implementation of the op (the compiled one and the
    Triton one share them). forward_op(x, weight, logits, bias, sub, step, pool, blend) returns
    (tokens, uint8 window argmax or an empty tensor); backward_op(grad, x, weight, logits,
    indices, sub, step, pool, blend, output_mask) returns the four gradients, a zero-element
    tensor where output_mask is false. Both are op identifiers that are also callable."""

    def setup_context(ctx, inputs, output):
        x, weight, logits, bias, sub, step, pool, blend = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(x, weight, logits, indices)
        ctx.options = (sub, step, pool, blend)

    def backward(ctx, grad_tokens, _grad_indices):
        x, weight, logits, indices = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:4])
        grads = backward_op(grad_tokens, x, weight, logits, indices, *ctx.options, mask)
        return tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,) * 4

    def no_double_backward(ctx, *grads):
        raise RuntimeError("subkernel_tokenize: double backward (create_graph=True) is not supported")

    torch.library.register_fake(forward_op)(_tokens_fake)
    torch.library.register_fake(backward_op)(_backward_fake)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op, no_double_backward, setup_context=lambda ctx, inputs, output: None)
    register_float32_autocast(forward_op, backward_op)


register_implementation(
    torch.ops.lowres.subkernel_tokenize_with_indices.default, torch.ops.lowres._subkernel_tokenize_backward.default
)
