"""What every implementation of the two ops registers beside its kernels: the fake (meta)
implementations for tracing, the autograd formulas (whose backward is an op of its own) and the
float32 autocast rule. The compiled ops (`lowres::*`, lowres_kernels/ops.py) and the Triton ops
(`lowres_triton::*`, lowres_kernels/triton/) both register through here, under the same op names:

    subkernel_tokenize_with_indices   (tokens, uint8 window argmax or an empty tensor)
    _subkernel_tokenize_backward      (dx, dweight, dlogits, dbias)
    domain_attention                  P @ v
    _domain_attention_backward        (dv, dmaps, dmix_logits)

A backward op returns a zero-element tensor for a gradient its output_mask does not ask for.
"""

from __future__ import annotations

import torch

from ._autocast import register_float32_autocast
from ._validation import check_domain_attention, check_subkernel_tokenize


def _not_requested_or_like(like, output_mask):
    return tuple(t.new_empty(t.shape) if wanted else t.new_empty(0) for t, wanted in zip(like, output_mask))


def _register(forward_op, backward_op, fake_forward, fake_backward, setup_context, backward, op_name: str) -> None:
    def no_double_backward(ctx, *grads):
        raise RuntimeError(f"{op_name}: double backward (create_graph=True) is not supported")

    torch.library.register_fake(forward_op)(fake_forward)
    torch.library.register_fake(backward_op)(fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op, no_double_backward, setup_context=lambda ctx, inputs, output: None)
    register_float32_autocast(forward_op, backward_op)


def _tokens_fake(x, weight, logits, bias, sub, step, pool, blend):
    geom = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend)
    shape = (x.shape[0], weight.shape[0], geom.grid_h, geom.grid_w)
    tokens = x.new_empty(shape)
    indices = x.new_empty(shape if pool == "max" else (0,), dtype=torch.uint8)
    return tokens, indices


def _tokenize_backward_fake(grad, x, weight, logits, indices, sub, step, pool, blend, output_mask):
    return _not_requested_or_like((x, weight, logits, weight.new_empty(weight.shape[0])), output_mask)


def register_subkernel_tokenize(forward_op, backward_op) -> None:
    """Registrations of one implementation of subkernel_tokenize: forward_op(x, weight, logits,
    bias, sub, step, pool, blend) and backward_op(grad, x, weight, logits, indices, sub, step,
    pool, blend, output_mask), op identifiers that are also callable."""

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

    _register(
        forward_op, backward_op, _tokens_fake, _tokenize_backward_fake, setup_context, backward, "subkernel_tokenize"
    )


def _attention_fake(v, maps, mix_logits, num_prefix_tokens):
    check_domain_attention(v, maps, mix_logits, num_prefix_tokens)
    return v.new_empty(v.shape)


def _attention_backward_fake(grad, v, maps, mix_logits, num_prefix_tokens, output_mask):
    return _not_requested_or_like((v, maps, mix_logits), output_mask)


def register_domain_attention(forward_op, backward_op) -> None:
    """Registrations of one implementation of domain_attention: forward_op(v, maps, mix_logits,
    num_prefix_tokens) and backward_op(grad, v, maps, mix_logits, num_prefix_tokens, output_mask),
    op identifiers that are also callable."""

    def setup_context(ctx, inputs, output):
        v, maps, mix_logits, num_prefix_tokens = inputs
        ctx.save_for_backward(v, maps, mix_logits)
        ctx.num_prefix_tokens = num_prefix_tokens

    def backward(ctx, grad):
        v, maps, mix_logits = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grads = backward_op(grad, v, maps, mix_logits, ctx.num_prefix_tokens, mask)
        return tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,)

    _register(
        forward_op, backward_op, _attention_fake, _attention_backward_fake, setup_context, backward, "domain_attention"
    )
