"""The Triton backend (lowres_kernels.triton) against the naive oracles in lowres_kernels.reference.

On a machine with a GPU the kernels run compiled on CUDA tensors. Without one they run on CPU
tensors under the Triton interpreter, which must be on for the whole process before triton is
imported: `TRITON_INTERPRET=1 pytest tests/test_triton_ops.py` (scripts/test.sh does this);
otherwise this module skips.
"""

from __future__ import annotations

import os

import pytest
import torch
from kernel_testing import (
    REDUCED_PRECISION,
    assert_close_to_oracle,
    check_autocast_computes_in_float32,
    check_domain_attention_nonfinite_like_oracle,
    grads,
    leaves,
)

import lowres_kernels as lk
from lowres_kernels import reference

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")

if not GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU: run the Triton kernels under the interpreter with `TRITON_INTERPRET=1 pytest tests/test_triton_ops.py`",
        allow_module_level=True,
    )
pytest.importorskip("triton")
from lowres_kernels.triton import domain_attention as triton_da  # noqa: E402
from lowres_kernels.triton import subkernel_tokenize as triton_st  # noqa: E402


def check_against_oracle(ours_fn, oracle_fn, masters, dtype, *, check_grads=True):
    """ours_fn and oracle_fn on float64 master inputs cast to dtype, forward and every gradient,
    against the oracle in float64 (and, for float16/bfloat16, the oracle run in dtype: the
    tolerance rule of kernel_testing.assert_close_to_oracle)."""
    masters = [None if t is None else t.to(DEVICE) for t in masters]
    inputs = leaves(*masters, dtype=dtype, requires_grad=True)
    oracle_inputs = leaves(*masters, dtype=torch.float64)
    ours, oracle = ours_fn(*inputs), oracle_fn(*oracle_inputs)
    stock = stock_inputs = None
    if dtype in REDUCED_PRECISION:
        stock_inputs = leaves(*masters, dtype=dtype)
        stock = oracle_fn(*stock_inputs)
    assert_close_to_oracle(ours, oracle.detach(), stock, dtype, "output")
    if not check_grads:
        return
    names = [f"grad {i}" for i, t in enumerate(inputs) if t is not None]
    stock_grads = grads(stock, stock_inputs) if stock is not None else [None] * len(names)
    for name, a, o, st in zip(names, grads(ours, inputs), grads(oracle, oracle_inputs), stock_grads):
        assert_close_to_oracle(a, o, st, dtype, name)


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


def tokenize_masters(geometry, *, batch=2, dim=8, channels=3, bias=True, seed=0):
    """float64 inputs [x, weight, logits, bias] and the sub/step options of a geometry."""
    q, sub, step, T, height, width = GEOMETRIES[geometry]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(dim, channels, q, q, generator=gen, dtype=torch.float64) / q
    logits = torch.randn(T, generator=gen, dtype=torch.float64)
    b = torch.randn(dim, generator=gen, dtype=torch.float64) if bias else None
    return [x, weight, logits, b], dict(sub=sub, step=step)


def tokenize_inputs(geometry, dtype, **kwargs):
    masters, options = tokenize_masters(geometry, **kwargs)
    return leaves(*[None if t is None else t.to(DEVICE) for t in masters], dtype=dtype), options


def check_tokenize(geometry, dtype, *, pool, blend, bias=True, batch=2, check_grads=True):
    masters, options = tokenize_masters(geometry, bias=bias, batch=batch)
    options.update(pool=pool, blend=blend)
    check_against_oracle(
        lambda *t: lk.subkernel_tokenize(*t, **options, backend="triton"),
        lambda *t: reference.subkernel_tokenize(*t, **options),
        masters,
        dtype,
        check_grads=check_grads,
    )


@pytest.mark.parametrize(
    "geometry,pool,blend,bias",
    [
        *((g, pool, 1.0, False) for g in SWEPT_GEOMETRIES for pool in ("max", "avg")),
        *((g, pool, 0.3, True) for g in SWEPT_GEOMETRIES for pool in ("max", "avg")),
        ("q14-u7-step2", "max", 0.5, True),
    ],
)
def test_subkernel_tokenize_matches_reference(geometry, pool, blend, bias):
    check_tokenize(geometry, torch.float32, pool=pool, blend=blend, bias=bias)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("blend", [0.0, -0.5])
def test_subkernel_tokenize_float64_and_unusual_blend(pool, blend):
    check_tokenize("q6-u3-step2", torch.float64, pool=pool, blend=blend, batch=1)


@pytest.mark.parametrize("dtype", REDUCED_PRECISION, ids=str)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_subkernel_tokenize_low_precision(dtype, pool):
    # Rounding can move a window's argmax, which routes a whole gradient elsewhere in either
    # implementation: max-pool gradients are checked in float32/float64 only.
    check_tokenize("q6-u3-step2", dtype, pool=pool, blend=0.5, check_grads=pool == "avg")


@pytest.mark.parametrize("dtype", REDUCED_PRECISION, ids=str)
def test_subkernel_tokenize_max_pool_low_precision_gradients(dtype):
    # Inputs whose window maxima stand far apart: a positive kernel and, in each token, one fine
    # patch raised by 1 over small noise. Rounding cannot move an argmax, so the routed gradients
    # of both implementations are comparable.
    (x, weight, logits, bias), options = tokenize_masters("q6-u3-step2")
    sub, ratio = 3, 2
    batch, _, height, width = x.shape
    gen = torch.Generator().manual_seed(1)
    window = torch.randint(0, ratio * ratio, (batch, 1, height // 6, width // 6), generator=gen)
    fine_grid = torch.zeros(batch, 1, height // sub, width // sub, dtype=torch.float64)
    for position in range(ratio * ratio):
        fine_grid[:, :, position // ratio :: ratio, position % ratio :: ratio] = (window == position).double()
    bump = fine_grid.repeat_interleave(sub, dim=2).repeat_interleave(sub, dim=3)
    masters = [0.1 * x + bump, weight.abs(), logits, bias]
    options.update(pool="max", blend=0.5)
    check_against_oracle(
        lambda *t: lk.subkernel_tokenize(*t, **options, backend="triton"),
        lambda *t: reference.subkernel_tokenize(*t, **options),
        masters,
        dtype,
    )


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
    (x, weight, logits, bias), options = tokenize_inputs("q6-u2-step1", torch.float32)
    x = x.detach().to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    weight = weight.detach()  # only the logits are trained, as in the paper
    ours = lk.subkernel_tokenize(x, weight, logits, bias, **options, pool="max", backend="triton")
    oracle_inputs = leaves(x, weight, logits, bias, dtype=torch.float64)
    oracle_inputs[0].requires_grad_(False)
    oracle_inputs[1].requires_grad_(False)
    oracle = reference.subkernel_tokenize(*oracle_inputs, **options, pool="max")
    assert_close_to_oracle(ours, oracle.detach(), None, torch.float32, "output")
    for name, a, o in zip(("logits", "bias"), grads(ours, (logits, bias)), grads(oracle, oracle_inputs)):
        assert_close_to_oracle(a, o, None, torch.float32, f"d{name}")


def test_subkernel_tokenize_empty_batch():
    (x, weight, logits, bias), options = tokenize_inputs("q4-u2-step2", torch.float32, batch=0)
    ours = lk.subkernel_tokenize(x, weight, logits, bias, **options, backend="triton")
    assert ours.shape == (0, 8, 7, 7)
    gradients = torch.autograd.grad(ours.sum(), (x, weight, logits, bias))
    assert all(torch.count_nonzero(g) == 0 for g in gradients)


# ----------------------------------------------------------------------------------------------
# domain_attention


def attention_masters(h, num_maps, num_prefix, *, batch=2, width=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, num_prefix + h * h, width, generator=gen, dtype=torch.float64)
    maps = torch.randn(num_maps, 2 * h, 2 * h, generator=gen, dtype=torch.float64)
    mix_logits = torch.randn(num_maps, generator=gen, dtype=torch.float64)
    return [v, maps, mix_logits]


def attention_inputs(h, num_maps, num_prefix, dtype, **kwargs):
    return leaves(*[t.to(DEVICE) for t in attention_masters(h, num_maps, num_prefix, **kwargs)], dtype=dtype)


def check_attention(h, num_maps, num_prefix, dtype, **kwargs):
    check_against_oracle(
        lambda *t: lk.domain_attention(*t, num_prefix_tokens=num_prefix, backend="triton"),
        lambda *t: reference.domain_attention(*t, num_prefix_tokens=num_prefix),
        attention_masters(h, num_maps, num_prefix, **kwargs),
        dtype,
    )


@pytest.mark.parametrize("h", [2, 4])
@pytest.mark.parametrize("num_maps", [1, 3])
@pytest.mark.parametrize("num_prefix", [0, 1, 3])
def test_domain_attention_matches_reference(h, num_maps, num_prefix):
    check_attention(h, num_maps, num_prefix, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, *REDUCED_PRECISION], ids=str)
def test_domain_attention_other_dtypes(dtype):
    # batch 5 over the interpreter's two reduction slices: uneven slices.
    check_attention(4, 3, 1, dtype, batch=5)


def test_domain_attention_partial_gradients_and_non_contiguous_input():
    v, maps, mix_logits = attention_inputs(4, 3, 1, torch.float32, width=40)
    v = v.detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert not v.is_contiguous()
    ours = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
    oracle_inputs = leaves(v, maps, mix_logits, dtype=torch.float64)
    oracle_inputs[0].requires_grad_(False)
    oracle = reference.domain_attention(*oracle_inputs, num_prefix_tokens=1)
    assert_close_to_oracle(ours, oracle.detach(), None, torch.float32, "output")
    for name, a, o in zip(("maps", "mix_logits"), grads(ours, (maps, mix_logits)), grads(oracle, oracle_inputs)):
        assert_close_to_oracle(a, o, None, torch.float32, f"d{name}")


def test_domain_attention_hand_computed_value():
    # h=1: one patch token and one CLS token. The CLS row is uniform; the patch row has logit 0 for
    # the CLS column and maps[c, 1, 1] for itself, so with one map it weights v by (1, e^m)/(1 + e^m).
    v = torch.tensor([[[2.0], [4.0]]], device=DEVICE)
    maps = torch.zeros(1, 2, 2, device=DEVICE)
    maps[0, 1, 1] = 1.0
    out = triton_da.domain_attention_op(v, maps, torch.zeros(1, device=DEVICE), 1)
    e = torch.e
    torch.testing.assert_close(out, torch.tensor([[[3.0], [(2 + 4 * e) / (1 + e)]]], device=DEVICE))


def test_domain_attention_nan_and_inf_give_the_oracle_rows():
    check_domain_attention_nonfinite_like_oracle(DEVICE, "triton")


def test_domain_attention_empty_batch():
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32, batch=0)
    ours = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend="triton")
    assert ours.shape == v.shape
    gradients = torch.autograd.grad(ours.sum(), (v, maps, mix_logits))
    assert all(torch.count_nonzero(g) == 0 for g in gradients)


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
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


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


def test_backward_ops_check_the_incoming_gradient():
    x, weight, logits = torch.randn(1, 3, 8, 8, device=DEVICE), torch.randn(4, 3, 4, 4, device=DEVICE), torch.randn(4, device=DEVICE)
    tokens, indices = triton_st.subkernel_tokenize_with_indices(x, weight, logits, None, 2, 2, "max", 1.0)
    with pytest.raises(ValueError, match=r"grad must be \[1, 4, 2, 2\], got \[1, 4, 2, 1\]"):
        triton_st.subkernel_tokenize_backward(tokens[..., :1], x, weight, logits, indices, 2, 2, "max", 1.0, [True] * 4)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float64 but x has torch.float32"):
        triton_st.subkernel_tokenize_backward(tokens.double(), x, weight, logits, indices, 2, 2, "max", 1.0, [True] * 4)
    v, maps, mix = torch.randn(2, 5, 3, device=DEVICE), torch.randn(2, 4, 4, device=DEVICE), torch.randn(2, device=DEVICE)
    with pytest.raises(ValueError, match=r"grad must be \[2, 5, 3\], got \[2, 4, 3\]"):
        triton_da.domain_attention_backward(v[:, 1:], v, maps, mix, 1, [True] * 3)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float64 but v has torch.float32"):
        triton_da.domain_attention_backward(v.double(), v, maps, mix, 1, [True] * 3)


def test_float64_autotuning_keeps_only_the_smallest_tiles():
    # FMA multiplication of float64 tiles holds the whole [M, K, N] product: the GPU autotuner
    # must not try the large tiles for it (the interpreter runs a single config, so check directly).
    from lowres_kernels.triton._common import _GPU_CONFIGS as configs
    from lowres_kernels.triton._common import prune_for_float64

    for dtype, expected in ((torch.float32, configs), (torch.float64, configs[:1])):
        named_args = {"x_ptr": torch.empty(1, dtype=dtype), "num_tokens": 4}
        assert prune_for_float64(configs, named_args) == expected
    assert configs[0].kwargs == {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


@pytest.mark.skipif(not GPU, reason="device mismatch needs a GPU")
def test_tensors_on_two_devices_raise():
    v, maps, mix_logits = attention_inputs(2, 3, 1, torch.float32)
    with pytest.raises(RuntimeError, match="maps is on cpu but v is on cuda"):
        lk.domain_attention(v, maps.cpu(), mix_logits, num_prefix_tokens=1, backend="triton")


def test_ops_compute_in_float32_under_autocast():
    check_autocast_computes_in_float32(DEVICE, "triton")
