"""domain_attention: the functional entry point, its backend dispatch, and the autograd,
autocast and fake (meta) registrations of the compiled op `lowres::domain_attention`."""

from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from .._backend import resolve_backend
from .._validation import check_domain_attention
from ._autocast import autocast_off, float32_under_autocast, register_float32_autocast


def domain_attention(
    v: torch.Tensor,
    maps: torch.Tensor,
    mix_logits: torch.Tensor,
    *,
    num_prefix_tokens: int = 1,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Global domain attention of paper 000 Sec. 3.3 (SPEC §2), without the output projection.

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
    if name == "triton":
        from ..triton.domain_attention import domain_attention as triton_domain_attention

        return triton_domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix_tokens)
    return torch.ops.lowres.domain_attention(v, maps, mix_logits, num_prefix_tokens)


def _output_fake(v, maps, mix_logits, num_prefix_tokens):
    check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    return v.new_empty(v.shape)


def _backward_fake(grad, v, maps, mix_logits, num_prefix_tokens, output_mask):
    like = (v, maps, mix_logits)
    return tuple(t.new_empty(t.shape) if wanted else t.new_empty(0) for t, wanted in zip(like, output_mask))


def register_implementation(forward_op, backward_op) -> None:
    """Fake, autograd and autocast registrations of one implementation of the op (the compiled one and the
    Triton one share them). forward_op(v, maps, mix_logits, num_prefix_tokens) returns P @ v;
    backward_op(grad, v, maps, mix_logits, num_prefix_tokens, output_mask) returns the three
    gradients, a zero-element tensor where output_mask is false. Both are op identifiers that
    are also callable."""

    def setup_context(ctx, inputs, output):
        v, maps, mix_logits, num_prefix_tokens = inputs
        ctx.save_for_backward(v, maps, mix_logits)
        ctx.num_prefix_tokens = num_prefix_tokens

    def backward(ctx, grad):
        v, maps, mix_logits = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grads = backward_op(grad, v, maps, mix_logits, ctx.num_prefix_tokens, mask)
        return tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,)

    def no_double_backward(ctx, *grads):
        raise RuntimeError("domain_attention: double backward (create_graph=True) is not supported")

    torch.library.register_fake(forward_op)(_output_fake)
    torch.library.register_fake(backward_op)(_backward_fake)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op, no_double_backward, setup_context=lambda ctx, inputs, output: None)
    register_float32_autocast(forward_op, backward_op)


register_implementation(torch.ops.lowres.domain_attention.default, torch.ops.lowres._domain_attention_backward.default)
