"""domain_attention (docs/ops.md): every backend available here against the naive oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import (
    ALL_DTYPES,
    REDUCED_PRECISION,
    assert_close_to_oracle,
    check_domain_attention_nonfinite_like_oracle,
    grads,
    leaves,
)

import lowres_kernels as lk
from lowres_kernels import reference


def make_inputs(batch=2, grid=4, num_maps=3, num_prefix=1, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, num_prefix + grid * grid, width, generator=g, dtype=torch.float64)
    maps = torch.randn(num_maps, 2 * grid, 2 * grid, generator=g, dtype=torch.float64)
    mix_logits = torch.randn(num_maps, generator=g, dtype=torch.float64)
    return v, maps, mix_logits


def run(fn, inputs, **options):
    out = fn(*inputs, **options)
    return out, grads(out, inputs)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        dict(grid=4, num_maps=3, num_prefix=1),
        dict(grid=2, num_maps=1, num_prefix=0),
        dict(grid=4, num_maps=10, num_prefix=4),  # register tokens
        dict(grid=16, num_maps=10, num_prefix=1, batch=1, width=4),  # the paper's ViT-H/14 grid
    ],
    ids=lambda s: f"h{s['grid']}C{s['num_maps']}p{s['num_prefix']}",
)
def test_matches_oracle_forward_and_gradients(dtype, shape):
    master = make_inputs(**shape)
    options = dict(num_prefix_tokens=shape["num_prefix"])
    oracle_out, oracle_grads = run(reference.domain_attention, leaves(*master, dtype=torch.float64), **options)
    ours_out, ours_grads = run(lk.domain_attention, leaves(*master, dtype=dtype), backend="cpp", **options)
    stock_out = stock_grads = None
    if dtype in REDUCED_PRECISION:
        stock_out, stock_grads = run(reference.domain_attention, leaves(*master, dtype=dtype), **options)
    assert_close_to_oracle(ours_out, oracle_out, stock_out, dtype, "output")
    for i, name in enumerate(["v", "maps", "mix_logits"]):
        assert_close_to_oracle(ours_grads[i], oracle_grads[i], None if stock_grads is None else stock_grads[i], dtype, f"d{name}")


def test_matches_the_formula_of_the_paper():
    # A_c[(i,j),(k,l)] = M_c[h - i + k, h - j + l]; prefix rows uniform, prefix columns logit 0.
    v, maps, mix = make_inputs(batch=1, grid=3, num_maps=2, num_prefix=1)
    h, n = 3, 10
    probabilities = torch.zeros(n, n, dtype=torch.float64)
    for c in range(2):
        logits = torch.zeros(n, n, dtype=torch.float64)
        for i in range(h):
            for j in range(h):
                for k in range(h):
                    for l in range(h):
                        logits[1 + i * h + j, 1 + k * h + l] = maps[c, h - i + k, h - j + l]
        probabilities += torch.softmax(mix, 0)[c] * torch.softmax(logits, -1)
    torch.testing.assert_close(lk.domain_attention(v, maps, mix), probabilities @ v)


@pytest.mark.parametrize("num_prefix", [0, 1, 3])
def test_gradcheck(num_prefix):
    inputs = leaves(*make_inputs(batch=2, grid=2, num_maps=2, num_prefix=num_prefix, width=3), dtype=torch.float64)
    fn = lambda *a: lk.domain_attention(*a, num_prefix_tokens=num_prefix, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_only_requested_gradients_are_computed():
    v, maps, mix = leaves(*make_inputs(), dtype=torch.float64, requires_grad=False)
    maps.requires_grad_(True)
    (grad_maps,) = torch.autograd.grad(lk.domain_attention(v, maps, mix).sum(), [maps])
    expected = torch.autograd.grad(reference.domain_attention(v, maps, mix).sum(), [maps])[0]
    torch.testing.assert_close(grad_maps, expected)
    # The first row and column of every map are never read (the crop offsets are 1..2h-1).
    assert torch.equal(grad_maps[:, 0, :], torch.zeros_like(grad_maps[:, 0, :]))
    assert torch.equal(grad_maps[:, :, 0], torch.zeros_like(grad_maps[:, :, 0]))


def test_double_backward_raises():
    v, maps, mix = leaves(*make_inputs(), dtype=torch.float64)
    (grad_maps,) = torch.autograd.grad(lk.domain_attention(v, maps, mix).sum(), [maps], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_maps.sum().backward()


@pytest.mark.parametrize("num_prefix", [0, 2])
def test_opcheck(num_prefix):
    v, maps, mix = leaves(*make_inputs(num_prefix=num_prefix), dtype=torch.float32)
    torch.library.opcheck(torch.ops.lowres.domain_attention.default, (v, maps, mix, num_prefix))
    grad = torch.randn_like(v)
    torch.library.opcheck(
        torch.ops.lowres._domain_attention_backward.default,
        (grad, v.detach(), maps.detach(), mix.detach(), num_prefix, [True, True, True]),
    )


def test_bad_input_to_the_raw_backward_op_raises_a_clear_error():
    v, maps, mix = make_inputs(num_prefix=1)
    v, maps, mix = v.float(), maps.float(), mix.float()
    backward = torch.ops.lowres._domain_attention_backward
    mask = [True, True, True]
    with pytest.raises(ValueError, match=r"grad must be \[2, 17, 6\], got \[2, 16, 6\]"):
        backward(v[:, 1:], v, maps, mix, 1, mask)
    with pytest.raises(ValueError, match=r"grad has dtype torch.float64 but v has torch.float32; they must match"):
        backward(v.double(), v, maps, mix, 1, mask)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend, dynamic):
    torch._dynamo.reset()
    v, maps, mix = leaves(*make_inputs(), dtype=torch.float32)

    def step(v, maps, mix):
        return (lk.domain_attention(v, maps, mix) * 2 + 1).square().mean()

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend, dynamic=dynamic)
    loss = compiled(v, maps, mix)
    ours = torch.autograd.grad(loss, [v, maps, mix])
    expected_loss = step(v, maps, mix)
    expected = torch.autograd.grad(expected_loss, [v, maps, mix])
    torch.testing.assert_close(loss, expected_loss)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_layouts_non_contiguous_and_expanded():
    v, maps, mix = make_inputs(width=5)
    expected = reference.domain_attention(v, maps, mix)
    variants = {
        "transposed_v": (v.transpose(1, 2).contiguous().transpose(1, 2), maps, mix),
        "strided_v": (torch.stack([v, -v], dim=3)[..., 0], maps, mix),
        "transposed_maps": (v, maps.transpose(1, 2).contiguous().transpose(1, 2), mix),
    }
    for name, args in variants.items():
        torch.testing.assert_close(lk.domain_attention(*args), expected, msg=lambda m: f"{name}: {m}")
    expanded = (v[:1].expand(3, -1, -1), maps[:1].expand(4, -1, -1), mix[:1].expand(4))
    torch.testing.assert_close(lk.domain_attention(*expanded), reference.domain_attention(*expanded))


def test_empty_batch_and_width():
    for shape in (dict(batch=0), dict(width=0)):
        v, maps, mix = leaves(*make_inputs(**shape), dtype=torch.float32)
        out = lk.domain_attention(v, maps, mix)
        assert out.shape == v.shape
        out.sum().backward()
        assert torch.equal(maps.grad, torch.zeros_like(maps))


def test_nan_and_inf_in_the_maps_propagate():
    v, maps, mix = make_inputs(num_prefix=1)
    h = 4
    poisoned = maps.clone()
    poisoned[0, h, h] = float("nan")  # the diagonal: every patch token reads it
    out = lk.domain_attention(v, poisoned, mix)
    assert out[:, 1:].isnan().all() and not out[:, 0].isnan().any()
    expected = reference.domain_attention(v, poisoned, mix)
    torch.testing.assert_close(out, expected, equal_nan=True)
    poisoned[0, h, h] = float("inf")
    torch.testing.assert_close(lk.domain_attention(v, poisoned, mix), reference.domain_attention(v, poisoned, mix), equal_nan=True)
    unused = maps.clone()
    unused[:, 0, :] = float("nan")  # row 0 is never read by any crop
    torch.testing.assert_close(lk.domain_attention(v, unused, mix), reference.domain_attention(v, maps, mix))


def test_nan_and_inf_in_the_mixing_logits_and_maps_give_the_oracle_rows():
    check_domain_attention_nonfinite_like_oracle("cpu", "cpp")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    grid=st.integers(1, 5),
    num_maps=st.integers(1, 4),
    num_prefix=st.integers(0, 3),
    width=st.integers(1, 9),
)
def test_fuzzed_shapes(batch, grid, num_maps, num_prefix, width):
    master = make_inputs(batch, grid, num_maps, num_prefix, width)
    options = dict(num_prefix_tokens=num_prefix)
    oracle_out, oracle_grads = run(reference.domain_attention, leaves(*master, dtype=torch.float64), **options)
    ours_out, ours_grads = run(lk.domain_attention, leaves(*master, dtype=torch.float64), **options)
    torch.testing.assert_close(ours_out, oracle_out, atol=1e-12, rtol=1e-10)
    for ours, oracle in zip(ours_grads, oracle_grads):
        torch.testing.assert_close(ours, oracle, atol=1e-12, rtol=1e-10)


def _bad_cases():
    v, maps, mix = make_inputs()
    return {
        "v rank": ((v[0], maps, mix), {}, r"v must be \[B, N, Dv\], got shape \[17, 6\]"),
        "maps rank": ((v, maps[0], mix), {}, r"maps must be \[C, 2h, 2h\] \(square, even side\), got shape \[8, 8\]"),
        "non-square maps": ((v, maps[:, :, :6], mix), {}, r"maps must be \[C, 2h, 2h\].*\[3, 8, 6\]"),
        "odd maps": ((v, maps[:, :7, :7], mix), {}, r"square, even side"),
        "mix count": ((v, maps, mix[:2]), {}, r"mix_logits must be \[C\] = \[3\] \(one per map\), got shape \[2\]"),
        "token count": ((v[:, :16], maps, mix), {}, r"v has N=16 tokens but maps \[3, 8, 8\] describe a 4x4 grid"),
        "prefix count": ((v, maps, mix), {"num_prefix_tokens": 2}, r"with num_prefix_tokens=2 needs N=18"),
        "negative prefix": ((v, maps, mix), {"num_prefix_tokens": -1}, r"num_prefix_tokens must be a non-negative int"),
        "integer v": ((v.long(), maps, mix), {}, r"v must be a floating tensor"),
        "mixed dtypes": ((v, maps.float(), mix), {}, r"maps has dtype torch.float32 but v has torch.float64"),
        "integer mix": ((v, maps, mix.int()), {}, r"mix_logits must be a floating tensor"),
    }


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_a_clear_error(backend, case):
    args, options, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        lk.domain_attention(*args, backend=backend, **options)


@pytest.mark.parametrize("case", ["v rank", "non-square maps", "mix count", "token count", "mixed dtypes"])
def test_bad_input_to_the_raw_op_raises_a_clear_error(case):
    (v, maps, mix), options, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        torch.ops.lowres.domain_attention(v, maps, mix, options.get("num_prefix_tokens", 1))


def test_mixed_devices_raise():
    v, maps, mix = make_inputs()
    with pytest.raises(RuntimeError, match=r"maps is on meta but v is on cpu"):
        lk.domain_attention(v, maps.to("meta"), mix)
