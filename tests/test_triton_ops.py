"""The Triton backend (lowres_kernels.triton) against the naive oracles in lowres_kernels.reference.

On a machine with a GPU the kernels run compiled on CUDA tensors. Without one they run on CPU
tensors under the Triton interpreter, which triton reads when it is first imported: this module
enables it just for that import (and for its own tests), so other test files see no change.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import lowres_kernels as lk
from lowres_kernels import reference

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")

if not GPU:
    _already_imported = "triton" in sys.modules
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        from lowres_kernels.triton import _common
        from lowres_kernels.triton import domain_attention as triton_da
        from lowres_kernels.triton import subkernel_tokenize as triton_st
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous
    if _already_imported and not _common.INTERPRETING:  # pragma: no cover
        pytest.skip(
            "triton was imported before this module could enable its interpreter; run this file on its own",
            allow_module_level=True,
        )
else:
    pytest.importorskip("triton")
    from lowres_kernels.triton import domain_attention as triton_da
    from lowres_kernels.triton import subkernel_tokenize as triton_st


@pytest.fixture(autouse=True)
def _triton_on_this_device(monkeypatch):
    """The backend check reads TRITON_INTERPRET at call time: keep it on during these tests only."""
    if not GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


# Tolerances against the reference in the same dtype (float32 reorders sums; float64 is exact
# to rounding). Half precision is judged by flash-attention's rule instead: our error against the
# float64 oracle must stay within twice the error of the oracle run in that precision, plus
# a floor relative to the values' scale.
TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}
LOW_PRECISION_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_low_precision_close(ours, lowp_reference, truth, dtype, what):
    scale = truth.abs().max().item() + 1e-12
    our_error = (ours.double() - truth).abs().max().item()
    reference_error = (lowp_reference.double() - truth).abs().max().item()
    allowed = 2 * reference_error + LOW_PRECISION_FLOOR[dtype] * scale
    assert our_error <= allowed, f"{what}: error {our_error:.3g} > {allowed:.3g} (reference error {reference_error:.3g})"


def grads_of(out, inputs, grad_out):
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, grad_out)


def leaf(t, dtype, requires_grad=True):
    return t.to(device=DEVICE, dtype=dtype).detach().requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------------
# subkernel_tokenize

# (q, sub, step, T, image height, width): step 1 (all sub-kernels inside the kernel), a 6/3
# kernel whose last sub-kernels are cut off at the kernel edge, and 4/2 on an image with enough
# tokens for several token tiles. The release's 14/7/step 2 (T=49) runs once: the interpreter
# is slow on its 588-long patch rows.
GEOMETRIES = {
    "q6-u2-step1": (6, 2, 1, 9, 12, 18),
    "q6-u3-step2": (6, 3, 2, 9, 12, 18),
    "q4-u2-step2": (4, 2, 2, 4, 28, 28),
    "q4-u2-step1-small": (4, 2, 1, 4, 8, 4),
    "q14-u7-step2": (14, 7, 2, 49, 28, 42),
}
SWEPT_GEOMETRIES = ["q6-u2-step1", "q6-u3-step2", "q4-u2-step2"]


def tokenize_inputs(geometry, dtype, *, batch=2, dim=8, channels=3, bias=True, seed=0):
    q, sub, step, T, height, width = GEOMETRIES[geometry]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(dim, channels, q, q, generator=gen, dtype=torch.float64) / q
    logits = torch.randn(T, generator=gen, dtype=torch.float64)
    b = torch.randn(dim, generator=gen, dtype=torch.float64) if bias else None
    inputs = [leaf(x, dtype), leaf(weight, dtype), leaf(logits, dtype), None if b is None else leaf(b, dtype)]
    return inputs, dict(sub=sub, step=step)


@pytest.mark.parametrize(
    "geometry,pool,blend,bias",
    [
        *((g, pool, 1.0, False) for g in SWEPT_GEOMETRIES for pool in ("max", "avg")),
        *((g, pool, 0.3, True) for g in SWEPT_GEOMETRIES for pool in ("max", "avg")),
        ("q14-u7-step2", "max", 0.5, True),
    ],
)
def test_subkernel_tokenize_matches_reference(geometry, pool, blend, bias):
    dtype = torch.float32
    inputs, options = tokenize_inputs(geometry, dtype, bias=bias)
    ours = lk.subkernel_tokenize(*inputs, **options, pool=pool, blend=blend, backend="triton")
    expected = reference.subkernel_tokenize(*inputs, **options, pool=pool, blend=blend)
    torch.testing.assert_close(ours, expected, **TOLERANCES[dtype])
    grad_out = torch.randn_like(expected)
    for ours_grad, expected_grad in zip(grads_of(ours, inputs, grad_out), grads_of(expected, inputs, grad_out)):
        torch.testing.assert_close(ours_grad, expected_grad, **TOLERANCES[dtype])


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("blend", [0.0, -0.5])
def test_subkernel_tokenize_float64_and_unusual_blend(pool, blend):
    dtype = torch.float64
    inputs, options = tokenize_inputs("q6-u3-step2", dtype, batch=1)
    ours = lk.subkernel_tokenize(*inputs, **options, pool=pool, blend=blend, backend="triton")
    expected = reference.subkernel_tokenize(*inputs, **options, pool=pool, blend=blend)
    torch.testing.assert_close(ours, expected, **TOLERANCES[dtype])
    grad_out = torch.randn_like(expected)
    for ours_grad, expected_grad in zip(grads_of(ours, inputs, grad_out), grads_of(expected, inputs, grad_out)):
        torch.testing.assert_close(ours_grad, expected_grad, **TOLERANCES[dtype])


def test_subkernel_tokenize_max_argmax_and_hand_computed_value():
    # One channel, one output channel, q=2, sub=1, step=1, T=4 equal logits: K_eff is the mean of
    # the four kernel entries, so the fine map is x * mean(K) and each token the max of its window.
    x = torch.tensor([[[[1.0, -2.0, 0.5, 4.0], [3.0, 0.0, -1.0, 2.0]]]], device=DEVICE)
    weight = torch.tensor([[[[1.0, 2.0], [3.0, 2.0]]]], device=DEVICE)  # mean 2
    logits = torch.zeros(4, device=DEVICE)
    tokens, indices = triton_st.subkernel_tokenize_with_indices(x, weight, logits, None, 1, 1, "max", 1.0)
    torch.testing.assert_close(tokens, torch.tensor([[[[6.0, 8.0]]]], device=DEVICE))
    assert indices.tolist() == [[[[2, 1]]]]  # row-major position of the max within each 2x2 window


def test_subkernel_tokenize_partial_gradients_and_non_contiguous_input():
    dtype = torch.float32
    (x, weight, logits, bias), options = tokenize_inputs("q6-u2-step1", dtype)
    x_channels_last = x.detach().to(memory_format=torch.channels_last)
    assert not x_channels_last.is_contiguous()
    weight = weight.detach()  # only the logits are trained, as in the paper
    ours = lk.subkernel_tokenize(x_channels_last, weight, logits, bias, **options, pool="max", backend="triton")
    expected = reference.subkernel_tokenize(x.detach(), weight, logits, bias, **options, pool="max")
    torch.testing.assert_close(ours, expected, **TOLERANCES[dtype])
    grad_out = torch.randn_like(expected)
    for ours_grad, expected_grad in zip(
        torch.autograd.grad(ours, (logits, bias), grad_out), torch.autograd.grad(expected, (logits, bias), grad_out)
    ):
        torch.testing.assert_close(ours_grad, expected_grad, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_subkernel_tokenize_low_precision(dtype, pool):
    inputs, options = tokenize_inputs("q6-u3-step2", dtype, bias=True)
    truth_inputs = [leaf(t.detach(), torch.float64) for t in inputs]
    ours = lk.subkernel_tokenize(*inputs, **options, pool=pool, blend=0.5, backend="triton")
    lowp = reference.subkernel_tokenize(*inputs, **options, pool=pool, blend=0.5)
    truth = reference.subkernel_tokenize(*truth_inputs, **options, pool=pool, blend=0.5)
    assert ours.dtype == dtype
    assert_low_precision_close(ours, lowp, truth, dtype, "tokens")
    if pool == "max":
        # Rounding can move a window's argmax, which routes a whole gradient elsewhere in either
        # implementation; max-pool gradients are checked in float32/float64 above.
        return
    grad_out = torch.randn_like(truth)
    names = ("x", "weight", "logits", "bias")
    ours_grads = grads_of(ours, inputs, grad_out.to(dtype))
    lowp_grads = grads_of(lowp, inputs, grad_out.to(dtype))
    truth_grads = grads_of(truth, truth_inputs, grad_out)
    for name, a, b, t in zip(names, ours_grads, lowp_grads, truth_grads):
        assert a.dtype == dtype
        assert_low_precision_close(a, b, t, dtype, f"d{name}")


def test_subkernel_tokenize_empty_batch():
    (x, weight, logits, bias), options = tokenize_inputs("q4-u2-step2", torch.float32, batch=0)
    ours = lk.subkernel_tokenize(x, weight, logits, bias, **options, backend="triton")
    assert ours.shape == (0, 8, 7, 7)
    grads = torch.autograd.grad(ours.sum(), (x, weight, logits, bias))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


# ----------------------------------------------------------------------------------------------
# domain_attention


def attention_inputs(h, num_maps, num_prefix, dtype, *, batch=2, width=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, num_prefix + h * h, width, generator=gen, dtype=torch.float64)
    maps = torch.randn(num_maps, 2 * h, 2 * h, generator=gen, dtype=torch.float64)
    mix_logits = torch.randn(num_maps, generator=gen, dtype=torch.float64)
    return [leaf(v, dtype), leaf(maps, dtype), leaf(mix_logits, dtype)]


@pytest.mark.parametrize("h", [2, 4])
@pytest.mark.parametrize("num_maps", [1, 3])
@pytest.mark.parametrize("num_prefix", [0, 1, 3])
def test_domain_attention_matches_reference(h, num_maps, num_prefix):
    dtype = torch.float32
    inputs = attention_inputs(h, num_maps, num_prefix, dtype)
    ours = lk.domain_attention(*inputs, num_prefix_tokens=num_prefix, backend="triton")
    expected = reference.domain_attention(*inputs, num_prefix_tokens=num_prefix)
    torch.testing.assert_close(ours, expected, **TOLERANCES[dtype])
    grad_out = torch.randn_like(expected)
    for ours_grad, expected_grad in zip(grads_of(ours, inputs, grad_out), grads_of(expected, inputs, grad_out)):
        torch.testing.assert_close(ours_grad, expected_grad, **TOLERANCES[dtype])


def test_domain_attention_float64_batch_split_and_partial_gradients():
    dtype = torch.float64
    v, maps, mix_logits = attention_inputs(4, 3, 1, dtype, batch=5, width=40)
    v = v.detach().transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous, no gradient
    ours = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
    expected = reference.domain_attention(v, maps, mix_logits, num_prefix_tokens=1)
    torch.testing.assert_close(ours, expected, **TOLERANCES[dtype])
    grad_out = torch.randn_like(expected)
    for ours_grad, expected_grad in zip(
        torch.autograd.grad(ours, (maps, mix_logits), grad_out),
        torch.autograd.grad(expected, (maps, mix_logits), grad_out),
    ):
        torch.testing.assert_close(ours_grad, expected_grad, **TOLERANCES[dtype])


def test_domain_attention_hand_computed_value():
    # h=1: one patch token and one CLS token. The CLS row is uniform; the patch row has logit 0 for
    # the CLS column and maps[c, 1, 1] for itself, so with one map it weights v by (1, e^m)/(1 + e^m).
    v = torch.tensor([[[2.0], [4.0]]], device=DEVICE)
    maps = torch.zeros(1, 2, 2, device=DEVICE)
    maps[0, 1, 1] = 1.0
    out = triton_da.domain_attention_op(v, maps, torch.zeros(1, device=DEVICE), 1)
    e = torch.e
    torch.testing.assert_close(out, torch.tensor([[[3.0], [(2 + 4 * e) / (1 + e)]]], device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_domain_attention_low_precision(dtype):
    inputs = attention_inputs(4, 3, 1, dtype)
    truth_inputs = [leaf(t.detach(), torch.float64) for t in inputs]
    ours = lk.domain_attention(*inputs, num_prefix_tokens=1, backend="triton")
    lowp = reference.domain_attention(*inputs, num_prefix_tokens=1)
    truth = reference.domain_attention(*truth_inputs, num_prefix_tokens=1)
    assert ours.dtype == dtype
    assert_low_precision_close(ours, lowp, truth, dtype, "output")
    grad_out = torch.randn_like(truth)
    ours_grads = grads_of(ours, inputs, grad_out.to(dtype))
    lowp_grads = grads_of(lowp, inputs, grad_out.to(dtype))
    truth_grads = grads_of(truth, truth_inputs, grad_out)
    for name, a, b, t in zip(("v", "maps", "mix_logits"), ours_grads, lowp_grads, truth_grads):
        assert a.dtype == dtype
        assert_low_precision_close(a, b, t, dtype, f"d{name}")


def test_domain_attention_empty_batch():
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32, batch=0)
    ours = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
    assert ours.shape == v.shape
    grads = torch.autograd.grad(ours.sum(), (v, maps, mix_logits))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, double backward, bad input


def test_opcheck_subkernel_tokenize():
    # Max pooling with blend != 1 exercises every kernel (the fine GEMM, the patch GEMM, the routing).
    (x, weight, logits, bias), options = tokenize_inputs("q4-u2-step1-small", torch.float32, batch=1)
    args = (x, weight, logits, bias, options["sub"], options["step"], "max", 0.5)
    torch.library.opcheck(torch.ops.lowres_triton.subkernel_tokenize.default, args)
    with torch.no_grad():
        tokens, indices = torch.ops.lowres_triton.subkernel_tokenize(*args)
    backward_args = (torch.randn_like(tokens), x.detach(), weight.detach(), logits.detach(), indices, *args[4:])
    torch.library.opcheck(
        torch.ops.lowres_triton.subkernel_tokenize_backward.default, (*backward_args, [True, False, True, True])
    )


def test_opcheck_domain_attention():
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32)
    torch.library.opcheck(torch.ops.lowres_triton.domain_attention.default, (v, maps, mix_logits, 1))
    backward_args = (torch.randn_like(v), v.detach(), maps.detach(), mix_logits.detach(), 1, [True, False, True])
    torch.library.opcheck(torch.ops.lowres_triton.domain_attention_backward.default, backward_args)


# Inductor needs a GPU for Triton; under the interpreter the graph is traced and run by aot_eager,
# which exercises the same fake and autograd registrations.
COMPILE_BACKEND = "inductor" if GPU else "aot_eager"


def test_torch_compile_fullgraph():
    (x, weight, logits, bias), options = tokenize_inputs("q4-u2-step2", torch.float32)
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32)

    def both(x, weight, logits, bias, v, maps, mix_logits):
        tokens = lk.subkernel_tokenize(x, weight, logits, bias, **options, pool="max", blend=0.5, backend="triton")
        mixed = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
        return tokens.square().sum() + mixed.square().sum()

    torch._dynamo.reset()
    inputs = (x, weight, logits, bias, v, maps, mix_logits)
    compiled = torch.compile(both, fullgraph=True, backend=COMPILE_BACKEND)
    ours = compiled(*inputs)
    expected = both(*inputs)
    torch.testing.assert_close(ours, expected, **TOLERANCES[torch.float32])
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


def test_double_backward_raises():
    (x, weight, logits, bias), options = tokenize_inputs("q4-u2-step2", torch.float32, batch=1)
    tokens = lk.subkernel_tokenize(x, weight, logits, bias, **options, backend="triton")
    (grad_logits,) = torch.autograd.grad(tokens.sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="subkernel_tokenize.*double backward"):
        grad_logits.sum().backward()

    v, maps, mix_logits = attention_inputs(2, 1, 1, torch.float32)
    mixed = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
    (grad_maps,) = torch.autograd.grad(mixed.sum(), maps, create_graph=True)
    with pytest.raises(RuntimeError, match="domain_attention.*double backward"):
        grad_maps.sum().backward()


def _tokenize_call(**changes):
    args = dict(
        x=torch.randn(1, 3, 8, 8, device=DEVICE),
        weight=torch.randn(4, 3, 4, 4, device=DEVICE),
        logits=torch.randn(4, device=DEVICE),
        bias=None,
        sub=2,
        step=2,
        pool="max",
        blend=1.0,
    )
    args.update(changes)
    x, weight, logits, bias = args.pop("x"), args.pop("weight"), args.pop("logits"), args.pop("bias")
    return lambda: lk.subkernel_tokenize(x, weight, logits, bias, **args, backend="triton")


@pytest.mark.parametrize(
    "changes,error,message",
    [
        (dict(x=torch.randn(3, 8, 8)), ValueError, r"x must be \[B, C, H, W\], got shape \[3, 8, 8\]"),
        (dict(x=torch.randn(1, 3, 10, 8)), ValueError, r"image size 10x8 .* multiple of q=4"),
        (dict(weight=torch.randn(4, 2, 4, 4)), ValueError, r"weight has 2 input channels but x has 3"),
        (dict(logits=torch.randn(5)), ValueError, r"square number T = n\*n .* T = 5"),
        (dict(bias=torch.randn(3)), ValueError, r"bias must be \[D\] = \[4\], got shape \[3\]"),
        (dict(sub=3), ValueError, r"sub=3 must divide the kernel size q=4"),
        (dict(pool="median"), ValueError, r"pool must be one of"),
        (dict(logits=torch.randn(4, dtype=torch.float64)), ValueError, r"logits has dtype torch.float64"),
    ],
)
def test_subkernel_tokenize_bad_input(changes, error, message):
    changes = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in changes.items()}
    with pytest.raises(error, match=message):
        _tokenize_call(**changes)()


@pytest.mark.parametrize(
    "v_shape,maps_shape,mix_shape,num_prefix,message",
    [
        ((2, 17), (3, 8, 8), (3,), 1, r"v must be \[B, N, Dv\], got shape \[2, 17\]"),
        ((2, 17, 5), (3, 8, 6), (3,), 1, r"maps must be \[C, 2h, 2h\]"),
        ((2, 17, 5), (3, 8, 8), (2,), 1, r"mix_logits must be \[C\] = \[3\]"),
        ((2, 18, 5), (3, 8, 8), (3,), 1, r"v has N=18 tokens .* needs N=17"),
        ((2, 17, 5), (3, 8, 8), (3,), -1, r"num_prefix_tokens must be a non-negative int"),
    ],
)
def test_domain_attention_bad_input(v_shape, maps_shape, mix_shape, num_prefix, message):
    v, maps, mix_logits = (torch.randn(s, device=DEVICE) for s in (v_shape, maps_shape, mix_shape))
    with pytest.raises(ValueError, match=message):
        lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix, backend="triton")


@pytest.mark.skipif(not GPU, reason="device mismatch needs a GPU")
def test_tensors_on_two_devices_raise():
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32)
    with pytest.raises(RuntimeError, match="maps is on cpu but v is on cuda"):
        lk.domain_attention(v, maps.cpu(), mix_logits, num_prefix_tokens=1, backend="triton")
