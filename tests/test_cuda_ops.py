"""The CUDA kernels of subkernel_tokenize and domain_attention (csrc/cuda/).

Forward and every gradient against the naive float64 oracles in lowres_kernels.reference, per
dtype: float64/float32 to a tight tolerance; float16/bfloat16 by flash-attention's rule (our
error against the float64 oracle at most twice that of the oracle run in the same precision,
plus a small slack). Also gradcheck, opcheck, torch.compile, parity with the CPU kernels, the
max-pool argmax, NaN propagation, determinism, empty, non-contiguous and channels-last inputs,
and the errors for tensors on different devices. Skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import check_autocast_computes_in_float32, check_domain_attention_nonfinite_like_oracle

import lowres_kernels as lk
from lowres_kernels import reference
from lowres_kernels._library import cuda_kernels_built

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        torch.cuda.is_available() and not cuda_kernels_built(),
        reason="lowres_kernels was built without its CUDA kernels (LOWRES_WITH_CUDA)",
    ),
]

DEVICE = "cuda"
BACKEND = "cuda"
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (atol, rtol) against the float64 oracle; atol is relative to the largest oracle magnitude.
FULL_PRECISION = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-4)}
# Slack on top of 2x the stock error, relative to the largest oracle magnitude.
REDUCED_PRECISION_SLACK = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_matches(ours, oracle64, stock, dtype, what):
    """`ours` against the float64 oracle; `stock` is the oracle run in `dtype` (reduced precision)."""
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {dtype}"
    assert ours.shape == oracle64.shape, f"{what}: shape {tuple(ours.shape)}, expected {tuple(oracle64.shape)}"
    scale = max(1.0, oracle64.abs().max().item()) if oracle64.numel() else 1.0
    if dtype in FULL_PRECISION:
        atol, rtol = FULL_PRECISION[dtype]
        torch.testing.assert_close(ours.double(), oracle64, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")
        return
    ours_error = (ours.double() - oracle64).abs().max().item()
    stock_error = (stock.double() - oracle64).abs().max().item()
    limit = 2 * stock_error + REDUCED_PRECISION_SLACK[dtype] * scale
    assert ours_error <= limit, f"{what} in {dtype}: error {ours_error:.3g} > 2 x stock {stock_error:.3g} + slack"


def random(*shape, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(DEVICE)


def leaves(tensors, dtype):
    """Fresh leaves in `dtype` (None stays None)."""
    return [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in tensors]


def forward_and_grads(fn, inputs, cotangent_seed):
    """fn(*inputs) and the gradients of <fn(*inputs), R> for every tensor input, where R is a
    fixed random cotangent (the same for every implementation and dtype)."""
    out = fn(*inputs)
    cotangent = random(*out.shape, seed=cotangent_seed).to(out.dtype)
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], cotangent)
    return out.detach(), grads


def check_against_oracle(ours_fn, oracle_fn, masters, dtype, names):
    """Runs ours in `dtype`, the oracle in float64 on the dtype-rounded inputs and, for reduced
    precision, the oracle in `dtype` (the stock error); compares the output and every gradient."""
    rounded = [None if t is None else t.to(dtype) for t in masters]
    oracle_out, oracle_grads = forward_and_grads(oracle_fn, leaves(rounded, torch.float64), cotangent_seed=99)
    ours_out, ours_grads = forward_and_grads(ours_fn, leaves(rounded, dtype), cotangent_seed=99)
    stock_out, stock_grads = None, [None] * len(oracle_grads)
    if dtype not in FULL_PRECISION:
        stock_out, stock_grads = forward_and_grads(oracle_fn, leaves(rounded, dtype), cotangent_seed=99)
    present = [name for name, t in zip(names, masters) if t is not None]
    assert_matches(ours_out, oracle_out, stock_out, dtype, "output")
    for name, ours, oracle, stock in zip(present, ours_grads, oracle_grads, stock_grads):
        assert_matches(ours, oracle, stock, dtype, f"grad of {name}")


# ---------------------------------------------------------------------------------------------
# subkernel_tokenize

# (batch, channels, height, width, dim, q, sub, step, T): q = 14 with the release's T = 49 at
# step 2 (cut-off, zero-padded sub-kernels) and the paper's step 1; a non-224 image with D not a
# multiple of the 64-wide tiles and more tokens than one tile; a 3 x 3 window with padded edges.
# With these seeds the top two values of every max-pool window differ by at least 2e-5
# (relative) in float64 and after rounding the inputs to each dtype, far above float32 rounding:
# the argmax cannot legitimately differ from the oracle's.
TOKENIZE_SHAPES = [
    pytest.param((2, 3, 112, 168, 70, 14, 7, 2, 49), id="q14-step2-112x168-D70"),
    pytest.param((1, 3, 28, 42, 33, 14, 7, 1, 49), id="q14-step1-B1-D33"),
    pytest.param((2, 2, 18, 12, 5, 6, 2, 2, 9), id="q6-sub2-window3-padded"),
]
TOKENIZE_OPTIONS = [
    pytest.param(("max", 1.0, False), id="max"),
    pytest.param(("max", 0.5, True), id="max-blend-bias"),
    pytest.param(("avg", 1.0, True), id="avg-bias"),
    pytest.param(("avg", 0.5, False), id="avg-blend"),
]


def tokenize_masters(shape, with_bias, seed=0):
    batch, channels, height, width, dim, q, _, _, num_subkernels = shape
    x = random(batch, channels, height, width, seed=seed)
    weight = random(dim, channels, q, q, seed=seed + 1, scale=0.1)
    logits = random(num_subkernels, seed=seed + 2)
    bias = random(dim, seed=seed + 3) if with_bias else None
    return [x, weight, logits, bias]


def tokenize_fns(shape, pool, blend):
    sub, step = shape[6], shape[7]
    options = dict(sub=sub, step=step, pool=pool, blend=blend)

    def ours(x, weight, logits, bias):
        return lk.subkernel_tokenize(x, weight, logits, bias, **options, backend=BACKEND)

    def oracle(x, weight, logits, bias):
        return reference.subkernel_tokenize(x, weight, logits, bias, **options)

    return ours, oracle, options


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", TOKENIZE_OPTIONS)
@pytest.mark.parametrize("shape", TOKENIZE_SHAPES)
def test_subkernel_tokenize_matches_oracle(shape, options, dtype):
    pool, blend, with_bias = options
    ours, oracle, _ = tokenize_fns(shape, pool, blend)
    check_against_oracle(ours, oracle, tokenize_masters(shape, with_bias), dtype, ("x", "weight", "logits", "bias"))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_subkernel_tokenize_gradcheck(pool):
    shape = (1, 2, 8, 12, 3, 4, 2, 1, 4)
    _, _, options = tokenize_fns(shape, pool, 0.5)
    inputs = leaves(tokenize_masters(shape, with_bias=True), torch.float64)
    fn = lambda *args: lk.subkernel_tokenize(*args, **options, backend=BACKEND)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_subkernel_tokenize_opcheck(pool):
    shape = (2, 3, 28, 14, 6, 14, 7, 2, 49)
    x, weight, logits, bias = leaves(tokenize_masters(shape, with_bias=True), torch.float32)
    args = (x, weight, logits, bias, 7, 2, pool, 0.5)
    torch.library.opcheck(torch.ops.lowres.subkernel_tokenize_with_indices.default, args)
    tokens, indices = torch.ops.lowres.subkernel_tokenize_with_indices(*args)
    grad = torch.randn_like(tokens)
    backward_args = (grad, x.detach(), weight.detach(), logits.detach(), indices, 7, 2, pool, 0.5)
    for mask in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(torch.ops.lowres._subkernel_tokenize_backward.default, backward_args + (mask,))


def test_subkernel_tokenize_output_mask_gives_empty_tensors():
    shape = (2, 3, 28, 28, 10, 14, 7, 2, 49)
    x, weight, logits, _ = tokenize_masters(shape, with_bias=False)
    tokens, indices = torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, None, 7, 2, "max", 0.5)
    grad = random(*tokens.shape, seed=5)
    args = (grad, x, weight, logits, indices, 7, 2, "max", 0.5)
    full = torch.ops.lowres._subkernel_tokenize_backward(*args, [True, True, True, True])
    partial = torch.ops.lowres._subkernel_tokenize_backward(*args, [True, False, True, False])
    assert partial[1].numel() == 0 and partial[3].numel() == 0
    torch.testing.assert_close(partial[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(partial[2], full[2], rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_subkernel_tokenize_matches_cpu_kernel(pool):
    shape = (2, 3, 42, 28, 70, 14, 7, 2, 49)
    masters = tokenize_masters(shape, with_bias=True)
    args = (7, 2, pool, 0.5)
    cuda_tokens, cuda_indices = torch.ops.lowres.subkernel_tokenize_with_indices(*masters, *args)
    cpu_masters = [t.cpu() for t in masters]
    cpu_tokens, cpu_indices = torch.ops.lowres.subkernel_tokenize_with_indices(*cpu_masters, *args)
    torch.testing.assert_close(cuda_tokens.cpu(), cpu_tokens, rtol=1e-10, atol=1e-10)
    # float64 random inputs have no ties: the argmax of every window is the same.
    assert torch.equal(cuda_indices.cpu(), cpu_indices)
    grad = random(*cuda_tokens.shape, seed=7)
    mask = [True, True, True, True]
    cuda_grads = torch.ops.lowres._subkernel_tokenize_backward(grad, *masters[:3], cuda_indices, *args, mask)
    cpu_grads = torch.ops.lowres._subkernel_tokenize_backward(grad.cpu(), *cpu_masters[:3], cpu_indices, *args, mask)
    for name, ours, theirs in zip(("x", "weight", "logits", "bias"), cuda_grads, cpu_grads):
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")


def test_subkernel_tokenize_backward_is_deterministic():
    shape = (2, 3, 56, 56, 70, 14, 7, 2, 49)
    x, weight, logits, bias = leaves(tokenize_masters(shape, with_bias=True), torch.float32)
    runs = []
    for _ in range(2):
        out = lk.subkernel_tokenize(x, weight, logits, bias, pool="max", blend=0.5, backend=BACKEND)
        runs.append(torch.autograd.grad(out.square().sum(), (x, weight, logits)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_subkernel_tokenize_non_contiguous_inputs(layout):
    shape = (2, 3, 28, 42, 20, 14, 7, 2, 49)
    x, weight, logits, bias = tokenize_masters(shape, with_bias=True)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        weight = weight.to(memory_format=torch.channels_last)
    else:
        x = torch.cat([x, x], dim=3)[..., ::2]  # stride 2 along the width
        weight = weight.transpose(2, 3).contiguous().transpose(2, 3)
        logits = torch.stack([logits, logits], dim=1)[:, 0]
    assert not x.is_contiguous()
    inputs = leaves([x, weight, logits, bias], torch.float64)
    oracle_inputs = leaves([x, weight, logits, bias], torch.float64)
    ours, ours_grads = forward_and_grads(
        lambda *a: lk.subkernel_tokenize(*a, pool="max", blend=0.5, backend=BACKEND), inputs, cotangent_seed=3
    )
    oracle, oracle_grads = forward_and_grads(
        lambda *a: reference.subkernel_tokenize(*a, pool="max", blend=0.5), oracle_inputs, cotangent_seed=3
    )
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10)
    for ours_grad, oracle_grad in zip(ours_grads, oracle_grads):
        torch.testing.assert_close(ours_grad, oracle_grad, rtol=1e-10, atol=1e-10)


def test_subkernel_tokenize_empty_batch():
    x = torch.empty(0, 3, 28, 28, device=DEVICE, requires_grad=True)
    weight = torch.randn(8, 3, 14, 14, device=DEVICE, requires_grad=True)
    logits = torch.zeros(49, device=DEVICE, requires_grad=True)
    out = lk.subkernel_tokenize(x, weight, logits, backend=BACKEND)
    assert out.shape == (0, 8, 2, 2)
    grad_x, grad_weight, grad_logits = torch.autograd.grad(out.sum(), (x, weight, logits))
    assert grad_x.shape == x.shape
    assert torch.count_nonzero(grad_weight) == 0 and torch.count_nonzero(grad_logits) == 0


def test_subkernel_tokenize_nan_propagates_like_max_pool():
    shape = (1, 3, 28, 28, 6, 14, 7, 2, 49)
    x, weight, logits, _ = tokenize_masters(shape, with_bias=False)
    x[0, 1, 3, 20] = float("nan")  # inside token (0, 1)
    for pool in ("max", "avg"):
        ours = lk.subkernel_tokenize(x, weight, logits, pool=pool, backend=BACKEND)
        oracle = reference.subkernel_tokenize(x, weight, logits, pool=pool)
        assert torch.equal(ours.isnan(), oracle.isnan()) and ours.isnan().any()
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10, equal_nan=True)


def test_subkernel_tokenize_compiles_fullgraph():
    shape = (2, 3, 28, 42, 20, 14, 7, 2, 49)
    x, weight, logits, bias = leaves(tokenize_masters(shape, with_bias=True), torch.float32)

    def fn(x, weight, logits, bias):
        return lk.subkernel_tokenize(x, weight, logits, bias, pool="max", blend=0.5, backend=BACKEND).relu()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager_out, eager_grads = forward_and_grads(fn, [x, weight, logits, bias], cotangent_seed=4)
    compiled_out, compiled_grads = forward_and_grads(compiled, [x, weight, logits, bias], cotangent_seed=4)
    torch.testing.assert_close(compiled_out, eager_out)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_subkernel_tokenize_mixed_devices_raise():
    x = torch.randn(1, 3, 28, 28, device=DEVICE)
    weight = torch.randn(8, 3, 14, 14)
    logits = torch.zeros(49, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        lk.subkernel_tokenize(x, weight, logits, backend=BACKEND)
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, None, 7, 2, "max", 1.0)
    with pytest.raises(RuntimeError, match=r"bias is on cpu but x is on cuda"):
        lk.subkernel_tokenize(x, weight.to(DEVICE), logits, torch.zeros(8), backend=BACKEND)


# ---------------------------------------------------------------------------------------------
# domain_attention

# (batch, h, num_maps, num_prefix_tokens, value_dim): every h in {2, 4, 16}, C in {1, 10} and
# prefix count in {0, 1, 4}; N = prefix + h^2 is rarely a multiple of 32; Dv not a multiple of 64.
ATTENTION_SHAPES = [
    pytest.param((2, 2, 1, 0, 5), id="h2-C1-prefix0"),
    pytest.param((1, 4, 10, 1, 72), id="h4-C10-prefix1-B1"),
    pytest.param((2, 4, 1, 4, 3), id="h4-C1-prefix4"),
    pytest.param((2, 16, 10, 1, 40), id="h16-C10-prefix1"),
    pytest.param((1, 16, 1, 0, 66), id="h16-C1-prefix0"),
    pytest.param((2, 16, 10, 4, 8), id="h16-C10-prefix4"),
]


def attention_masters(shape, seed=0):
    batch, h, num_maps, num_prefix, value_dim = shape
    v = random(batch, num_prefix + h * h, value_dim, seed=seed)
    maps = random(num_maps, 2 * h, 2 * h, seed=seed + 1)
    mix_logits = random(num_maps, seed=seed + 2)
    return [v, maps, mix_logits]


def attention_fns(num_prefix):
    def ours(v, maps, mix_logits):
        return lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix, backend=BACKEND)

    def oracle(v, maps, mix_logits):
        return reference.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix)

    return ours, oracle


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_domain_attention_matches_oracle(shape, dtype):
    ours, oracle = attention_fns(shape[3])
    check_against_oracle(ours, oracle, attention_masters(shape), dtype, ("v", "maps", "mix_logits"))


@pytest.mark.parametrize("num_prefix", [0, 1])
def test_domain_attention_gradcheck(num_prefix):
    inputs = leaves(attention_masters((2, 2, 2, num_prefix, 3)), torch.float64)
    ours, _ = attention_fns(num_prefix)
    assert torch.autograd.gradcheck(ours, inputs)


def test_domain_attention_opcheck():
    v, maps, mix_logits = leaves(attention_masters((2, 4, 3, 1, 6)), torch.float32)
    torch.library.opcheck(torch.ops.lowres.domain_attention.default, (v, maps, mix_logits, 1))
    grad = torch.randn_like(v)
    for mask in ([True, True, True], [False, True, False]):
        args = (grad, v.detach(), maps.detach(), mix_logits.detach(), 1, mask)
        torch.library.opcheck(torch.ops.lowres._domain_attention_backward.default, args)


def test_domain_attention_output_mask_gives_empty_tensors():
    v, maps, mix_logits = attention_masters((2, 4, 3, 1, 6))
    grad = random(*v.shape, seed=5)
    full = torch.ops.lowres._domain_attention_backward(grad, v, maps, mix_logits, 1, [True, True, True])
    partial = torch.ops.lowres._domain_attention_backward(grad, v, maps, mix_logits, 1, [False, True, False])
    assert partial[0].numel() == 0 and partial[2].numel() == 0
    torch.testing.assert_close(partial[1], full[1], rtol=0, atol=0)


@pytest.mark.parametrize("num_prefix", [0, 1, 4])
def test_domain_attention_matches_cpu_kernel(num_prefix):
    masters = attention_masters((2, 16, 10, num_prefix, 24))
    grad = random(*masters[0].shape, seed=6)
    cpu_masters = [t.cpu() for t in masters]
    ours = torch.ops.lowres.domain_attention(*masters, num_prefix)
    theirs = torch.ops.lowres.domain_attention(*cpu_masters, num_prefix)
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-10, atol=1e-10)
    mask = [True, True, True]
    ours_grads = torch.ops.lowres._domain_attention_backward(grad, *masters, num_prefix, mask)
    cpu_grads = torch.ops.lowres._domain_attention_backward(grad.cpu(), *cpu_masters, num_prefix, mask)
    for name, ours_grad, cpu_grad in zip(("v", "maps", "mix_logits"), ours_grads, cpu_grads):
        torch.testing.assert_close(ours_grad.cpu(), cpu_grad, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_domain_attention_backward_is_deterministic():
    v, maps, mix_logits = leaves(attention_masters((4, 16, 10, 1, 64)), torch.float32)
    runs = []
    for _ in range(2):
        out = lk.domain_attention(v, maps, mix_logits, backend=BACKEND)
        runs.append(torch.autograd.grad(out.square().sum(), (v, maps, mix_logits)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_domain_attention_non_contiguous_v():
    _, maps, mix_logits = attention_masters((2, 4, 3, 1, 6))
    v = random(17, 2, 12, seed=8).transpose(0, 1)[..., ::2]  # [2, 17, 6], neither dim contiguous
    assert not v.is_contiguous()
    ours_inputs = leaves([v, maps, mix_logits], torch.float64)
    oracle_inputs = leaves([v, maps, mix_logits], torch.float64)
    ours_fn, oracle_fn = attention_fns(1)
    ours, ours_grads = forward_and_grads(ours_fn, ours_inputs, cotangent_seed=9)
    oracle, oracle_grads = forward_and_grads(oracle_fn, oracle_inputs, cotangent_seed=9)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10)
    for ours_grad, oracle_grad in zip(ours_grads, oracle_grads):
        torch.testing.assert_close(ours_grad, oracle_grad, rtol=1e-10, atol=1e-10)


def test_domain_attention_empty_batch():
    v = torch.empty(0, 17, 8, device=DEVICE, requires_grad=True)
    maps = torch.ones(3, 8, 8, device=DEVICE, requires_grad=True)
    mix_logits = torch.ones(3, device=DEVICE, requires_grad=True)
    out = lk.domain_attention(v, maps, mix_logits, backend=BACKEND)
    assert out.shape == v.shape
    grads = torch.autograd.grad(out.sum(), (v, maps, mix_logits))
    assert grads[0].shape == v.shape
    assert torch.count_nonzero(grads[1]) == 0 and torch.count_nonzero(grads[2]) == 0


def test_domain_attention_nan_in_maps_propagates():
    v, maps, mix_logits = attention_masters((2, 4, 2, 1, 6))
    maps[1, 3, 5] = float("nan")
    ours = lk.domain_attention(v, maps, mix_logits, backend=BACKEND)
    oracle = reference.domain_attention(v, maps, mix_logits)
    assert torch.equal(ours.isnan(), oracle.isnan()) and ours.isnan().any()
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10, equal_nan=True)


def test_domain_attention_nan_and_inf_give_the_oracle_rows():
    check_domain_attention_nonfinite_like_oracle(DEVICE, BACKEND)


def test_domain_attention_compiles_fullgraph():
    v, maps, mix_logits = leaves(attention_masters((2, 16, 10, 1, 40)), torch.float32)

    def fn(v, maps, mix_logits):
        return lk.domain_attention(v, maps, mix_logits, backend=BACKEND).tanh()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager_out, eager_grads = forward_and_grads(fn, [v, maps, mix_logits], cotangent_seed=4)
    compiled_out, compiled_grads = forward_and_grads(compiled, [v, maps, mix_logits], cotangent_seed=4)
    torch.testing.assert_close(compiled_out, eager_out)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_domain_attention_mixed_devices_raise():
    v = torch.randn(2, 17, 8, device=DEVICE)
    maps = torch.ones(3, 8, 8)
    mix_logits = torch.ones(3, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"maps is on cpu but v is on cuda"):
        lk.domain_attention(v, maps, mix_logits, backend=BACKEND)
    with pytest.raises(RuntimeError, match=r"maps is on cpu but v is on cuda"):
        torch.ops.lowres.domain_attention(v, maps, mix_logits, 1)
    with pytest.raises(RuntimeError, match=r"mix_logits is on cpu but v is on cuda"):
        lk.domain_attention(v, maps.to(DEVICE), mix_logits.cpu(), backend=BACKEND)


def test_ops_compute_in_float32_under_autocast():
    check_autocast_computes_in_float32(DEVICE, BACKEND)
