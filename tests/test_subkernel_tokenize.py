"""subkernel_tokenize (docs/ops.md): every backend available here against the naive oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import ALL_DTYPES, REDUCED_PRECISION, OpCalls, assert_close_to_oracle, grads, leaves

import lowres_kernels as lk
from lowres_kernels import reference

CPU_BACKENDS = ["cpp"]


def make_inputs(batch=2, channels=3, dim=8, height=28, width=28, patch=14, num_subkernels=49, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(dim, channels, patch, patch, generator=g, dtype=torch.float64) / patch
    logits = torch.randn(num_subkernels, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64) if bias else None
    return x, weight, logits, b


def run(fn, inputs, **options):
    out = fn(*inputs, **options)
    return out, grads(out, inputs)


OPTIONS = [
    dict(step=2, pool="max", blend=1.0),  # the paper's pooling with the release's sub-kernel offsets
    dict(step=2, pool="avg", blend=0.5),  # the release
    dict(step=1, pool="max", blend=0.3),
    dict(step=1, pool="avg", blend=1.0),
    dict(step=2, pool="max", blend=0.0),
    dict(step=2, pool="avg", blend=0.0),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_matches_oracle_forward_and_gradients(backend, options, bias, dtype):
    master = make_inputs(bias=bias, height=28, width=42)
    oracle_out, oracle_grads = run(reference.subkernel_tokenize, leaves(*master, dtype=torch.float64), **options)
    ours_out, ours_grads = run(lk.subkernel_tokenize, leaves(*master, dtype=dtype), backend=backend, **options)
    stock_out = stock_grads = None
    if dtype in REDUCED_PRECISION:
        stock_out, stock_grads = run(reference.subkernel_tokenize, leaves(*master, dtype=dtype), **options)
    assert_close_to_oracle(ours_out, oracle_out, stock_out, dtype, "tokens")
    names = ["x", "weight", "logits", "bias"][: len(ours_grads)]
    for i, name in enumerate(names):
        assert_close_to_oracle(ours_grads[i], oracle_grads[i], None if stock_grads is None else stock_grads[i], dtype, f"d{name}")


@pytest.mark.parametrize(
    "geometry",
    [
        dict(patch=14, sub=7, num_subkernels=49, step=2, height=224, width=224),  # ViT-H/14 at 224 px
        dict(patch=16, sub=8, num_subkernels=9, step=4, height=32, width=48),
        dict(patch=16, sub=4, num_subkernels=16, step=3, height=48, width=32),
        dict(patch=4, sub=2, num_subkernels=4, step=1, height=12, width=8),
        dict(patch=6, sub=6, num_subkernels=1, step=1, height=12, width=18),  # one sub-kernel = the plain conv
        dict(patch=9, sub=3, num_subkernels=25, step=2, height=18, width=27),  # last sub-kernels cut at the edge
    ],
    ids=lambda g: f"q{g['patch']}u{g['sub']}T{g['num_subkernels']}s{g['step']}-{g['height']}x{g['width']}",
)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_other_geometries(geometry, pool):
    geometry = dict(geometry)
    sub, step = geometry.pop("sub"), geometry.pop("step")
    master = make_inputs(dim=5, channels=2, **geometry)
    options = dict(sub=sub, step=step, pool=pool, blend=0.7)
    oracle_out, oracle_grads = run(reference.subkernel_tokenize, leaves(*master, dtype=torch.float64), **options)
    ours_out, ours_grads = run(lk.subkernel_tokenize, leaves(*master, dtype=torch.float64), backend="cpp", **options)
    torch.testing.assert_close(ours_out, oracle_out, atol=1e-10, rtol=1e-10)
    for ours, oracle in zip(ours_grads, oracle_grads):
        torch.testing.assert_close(ours, oracle, atol=1e-9, rtol=1e-9)


def test_one_subkernel_with_avg_pool_is_the_plain_patch_embedding():
    x, weight, _, b = make_inputs(patch=6, height=24, width=30)
    out = lk.subkernel_tokenize(x, weight, torch.zeros(1, dtype=torch.float64), b, sub=6, step=1, pool="avg")
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, b, stride=6))


@pytest.mark.parametrize("options", OPTIONS[:4], ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_gradcheck(options):
    inputs = leaves(*make_inputs(batch=2, channels=2, dim=3, height=14, width=28), dtype=torch.float64)
    fn = lambda *a: lk.subkernel_tokenize(*a, backend="cpp", **options)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    tiny = leaves(*make_inputs(batch=1, channels=1, dim=2, height=4, width=8, patch=4, num_subkernels=4), dtype=torch.float64)
    tiny_fn = lambda *a: lk.subkernel_tokenize(*a, backend="cpp", **(options | {"sub": 2, "step": 1}))  # noqa: E731
    assert torch.autograd.gradcheck(tiny_fn, tiny, eps=1e-6, atol=1e-5)


def test_only_requested_gradients_are_computed():
    x, weight, logits, b = leaves(*make_inputs(), dtype=torch.float64, requires_grad=False)
    logits.requires_grad_(True)
    with OpCalls() as calls:
        out = lk.subkernel_tokenize(x, weight, logits, b)
        (grad_logits,) = torch.autograd.grad(out.sum(), [logits])
    expected = torch.autograd.grad(reference.subkernel_tokenize(x, weight, logits, b).sum(), [logits])[0]
    torch.testing.assert_close(grad_logits, expected)
    # The backward op is asked for the logits' gradient only and computes no other.
    ((args, (grad_x, grad_weight, grad_logits_op, grad_bias)),) = calls.named("lowres._subkernel_tokenize_backward")
    assert list(args[-1]) == [False, False, True, False]
    assert grad_x.numel() == 0 and grad_weight.numel() == 0 and grad_bias.numel() == 0
    torch.testing.assert_close(grad_logits_op, expected)


def test_double_backward_raises():
    x, weight, logits, b = leaves(*make_inputs(), dtype=torch.float64)
    out = lk.subkernel_tokenize(x, weight, logits, b)
    (grad_logits,) = torch.autograd.grad(out.sum(), [logits], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_logits.sum().backward()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_opcheck(pool):
    x, weight, logits, b = leaves(*make_inputs(batch=1, dim=4), dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.lowres.subkernel_tokenize_with_indices.default, (x, weight, logits, b, 7, 2, pool, 0.5)
    )
    out, indices = torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, b, 7, 2, pool, 0.5)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.lowres._subkernel_tokenize_backward.default,
        (grad, x.detach(), weight.detach(), logits.detach(), indices, 7, 2, pool, 0.5, [True, True, True, True]),
    )


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend, dynamic):
    torch._dynamo.reset()
    x, weight, logits, b = leaves(*make_inputs(), dtype=torch.float32)

    def step(x, weight, logits, b):
        return lk.subkernel_tokenize(x, weight, logits, b, pool="max", blend=0.5).square().mean()

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend, dynamic=dynamic)
    loss = compiled(x, weight, logits, b)
    ours = torch.autograd.grad(loss, [x, weight, logits, b])
    expected_loss = step(x, weight, logits, b)
    expected = torch.autograd.grad(expected_loss, [x, weight, logits, b])
    torch.testing.assert_close(loss, expected_loss)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_layouts_non_contiguous_channels_last_and_expanded():
    x, weight, logits, b = make_inputs(dim=6)
    expected = reference.subkernel_tokenize(x, weight, logits, b)
    wide = torch.randn(2, 3, 28, 56, dtype=torch.float64)
    wide[..., ::2] = x
    variants = {
        "channels_last": (x.to(memory_format=torch.channels_last), weight, logits, b),
        "strided_x": (wide[..., ::2], weight, logits, b),
        "transposed_weight": (x, weight.transpose(2, 3).contiguous().transpose(2, 3), logits, b),
        "expanded_logits": (x, weight, logits[:1].expand(49), b),
    }
    for name, args in variants.items():
        want = expected if name != "expanded_logits" else reference.subkernel_tokenize(*args)
        torch.testing.assert_close(lk.subkernel_tokenize(*args), want, msg=lambda m: f"{name}: {m}")


def test_empty_batch():
    x, weight, logits, b = leaves(*make_inputs(batch=0), dtype=torch.float32)
    out = lk.subkernel_tokenize(x, weight, logits, b)
    assert out.shape == (0, 8, 2, 2)
    out.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_nan_in_the_image_propagates_to_its_token():
    x, weight, logits, b = make_inputs(dim=4)
    x[1, 0, 20, 3] = float("nan")  # token row 1, column 0 of image 1
    for pool in ("max", "avg"):
        out = lk.subkernel_tokenize(x, weight, logits, b, pool=pool)
        nan = out.isnan()
        assert nan[1, :, 1, 0].all(), pool
        assert nan.sum() == out.shape[1], pool


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sub=st.integers(1, 4),
    ratio=st.integers(1, 3),
    per_side=st.integers(1, 4),
    step=st.integers(1, 3),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    dim=st.integers(1, 5),
    pool=st.sampled_from(["max", "avg"]),
    blend=st.sampled_from([1.0, 0.25, 0.0]),
    with_bias=st.booleans(),
)
def test_fuzzed_shapes(sub, ratio, per_side, step, grid, batch, channels, dim, pool, blend, with_bias):
    patch = sub * ratio
    if (per_side - 1) * step >= patch:
        per_side = 1
    master = make_inputs(batch, channels, dim, grid[0] * patch, grid[1] * patch, patch, per_side**2, with_bias)
    options = dict(sub=sub, step=step, pool=pool, blend=blend)
    oracle_out, oracle_grads = run(reference.subkernel_tokenize, leaves(*master, dtype=torch.float64), **options)
    ours_out, ours_grads = run(lk.subkernel_tokenize, leaves(*master, dtype=torch.float64), **options)
    torch.testing.assert_close(ours_out, oracle_out, atol=1e-10, rtol=1e-10)
    for ours, oracle in zip(ours_grads, oracle_grads):
        torch.testing.assert_close(ours, oracle, atol=1e-9, rtol=1e-9)


def _bad_cases():
    x, weight, logits, b = make_inputs()
    f32 = lambda t: t.float()  # noqa: E731
    return {
        "x rank": ((x[0], weight, logits, b), {}, r"x must be \[B, C, H, W\], got shape \[3, 28, 28\]"),
        "weight rank": ((x, weight[0], logits, b), {}, r"weight must be \[D, C, q, q\]"),
        "channels": ((x[:, :2], weight, logits, b), {}, r"weight has 3 input channels but x has 2"),
        "non-square kernel": ((x, weight[..., :7], logits, b), {}, r"square kernel"),
        "logits not square": ((x, weight, logits[:48], b), {}, r"square number T = n\*n of entries, got T = 48"),
        "logits rank": ((x, weight, logits.view(7, 7), b), {}, r"logits must be a vector"),
        "bias shape": ((x, weight, logits, b[:3]), {}, r"bias must be \[D\] = \[8\], got shape \[3\]"),
        "sub does not divide": ((x, weight, logits, b), {"sub": 5}, r"sub=5 must divide the kernel size q=14"),
        "sub too large": ((x, weight, logits, b), {"sub": 28}, r"sub=28 must divide"),
        "offset outside": ((x, weight, logits, b), {"step": 3}, r"last offset 18 falls outside the kernel of size q=14"),
        "image size": ((x[..., :27], weight, logits, b), {}, r"image size 28x27 .* must be a multiple of q=14"),
        "pool name": ((x, weight, logits, b), {"pool": "mean"}, r"pool must be one of \('max', 'avg'\), got 'mean'"),
        "integer x": ((x.long(), weight, logits, b), {}, r"x must be a floating tensor"),
        "mixed dtypes": ((x, f32(weight), logits, b), {}, r"weight has dtype torch.float32 but x has torch.float64"),
        "integer logits": ((x, weight, logits.long(), b), {}, r"logits must be a floating tensor"),
        "nan blend": ((x, weight, logits, b), {"blend": float("nan")}, r"blend must be a finite number"),
        "zero step": ((x, weight, logits, b), {"step": 0}, r"step must be a positive int"),
    }


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_a_clear_error(backend, case):
    args, options, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        lk.subkernel_tokenize(*args, backend=backend, **options)


@pytest.mark.parametrize("case", ["x rank", "channels", "logits not square", "sub does not divide", "image size", "pool name", "mixed dtypes"])
def test_bad_input_to_the_raw_op_raises_a_clear_error(case):
    (x, weight, logits, b), options, message = _bad_cases()[case]
    o = dict(sub=7, step=2, pool="max", blend=1.0) | options
    with pytest.raises(ValueError, match=message):
        torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, b, o["sub"], o["step"], o["pool"], o["blend"])


def test_mixed_devices_raise():
    x, weight, logits, b = make_inputs()
    with pytest.raises(RuntimeError, match=r"weight is on meta but x is on cpu"):
        lk.subkernel_tokenize(x, weight.to("meta"), logits, b)


@pytest.mark.parametrize("step", [1, 2])
def test_subkernel_offsets_match_the_release(step):
    # ViT-H/14: T = 49 sub-kernels of 7x7, the (a, b)-th at offset (a * step, b * step): 0, 2, ..., 12
    # at step 2 (the last ones cut at the kernel edge and zero-padded), 0..6 at step 1. One-hot
    # logits select one sub-kernel, whose tokens are then one stride-7 convolution, max-pooled.
    x, weight, _, _ = make_inputs(batch=1, dim=2, bias=False)
    for a, b in [(0, 0), (6, 6), (2, 5), (6, 0)]:
        logits = torch.full((49,), float("-inf"), dtype=torch.float64)
        logits[a * 7 + b] = 0.0
        padded = torch.nn.functional.pad(weight, (0, 6, 0, 6))  # room for the cut-off sub-kernels
        subkernel = padded[:, :, a * step : a * step + 7, b * step : b * step + 7]
        expected = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x, subkernel, stride=7), 2)
        out = lk.subkernel_tokenize(x, weight, logits, step=step)
        assert out.shape == (1, 2, 2, 2)
        torch.testing.assert_close(out, expected, msg=lambda m: f"sub-kernel ({a}, {b}) at step {step}: {m}")


def test_bad_input_to_the_raw_backward_op_raises_a_clear_error():
    x, weight, logits, b = make_inputs()
    tokens, indices = torch.ops.lowres.subkernel_tokenize_with_indices(x, weight, logits, b, 7, 2, "max", 1.0)
    backward = torch.ops.lowres._subkernel_tokenize_backward
    mask = [True, True, True, True]
    with pytest.raises(ValueError, match=r"grad must be \[2, 8, 2, 2\], got \[2, 8, 2, 1\]"):
        backward(tokens[..., :1], x, weight, logits, indices, 7, 2, "max", 1.0, mask)
    with pytest.raises(ValueError, match=r"indices must be uint8 of shape \[2, 8, 2, 2\], got torch.int64"):
        backward(tokens, x, weight, logits, indices.long(), 7, 2, "max", 1.0, mask)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float32 but x has torch.float64; they must match"):
        backward(tokens.float(), x, weight, logits, indices, 7, 2, "max", 1.0, mask)
