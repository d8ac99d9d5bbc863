"""Shared helpers of the kernel tests: tolerances per dtype and the reduced-precision rule."""

from __future__ import annotations

import torch

import lowres_kernels as lk

# (atol, rtol) for comparing a backend with the float64 oracle at full precision.
FULL_PRECISION_TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-4),
}
REDUCED_PRECISION = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def assert_close_to_oracle(ours: torch.Tensor, oracle64: torch.Tensor, stock: torch.Tensor | None, dtype, what: str):
    """Full precision: allclose to the float64 oracle with FULL_PRECISION_TOLERANCE.

    float16/bfloat16 (flash-attention's rule): our max error against the float64 oracle is at
    most twice the error of the same computation done by stock PyTorch in that precision
    (`stock`), plus a small absolute slack for values near zero.
    """
    assert ours.dtype == dtype, f"{what}: expected dtype {dtype}, got {ours.dtype}"
    assert ours.shape == oracle64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(oracle64.shape)}"
    if dtype in FULL_PRECISION_TOLERANCE:
        atol, rtol = FULL_PRECISION_TOLERANCE[dtype]
        torch.testing.assert_close(ours.double(), oracle64, atol=atol * max(1.0, oracle64.abs().max().item()), rtol=rtol, msg=lambda m: f"{what}: {m}")
        return
    assert stock is not None
    ours_error = (ours.double() - oracle64).abs().max().item()
    stock_error = (stock.double() - oracle64).abs().max().item()
    slack = 1e-3 * max(1.0, oracle64.abs().max().item())
    assert ours_error <= 2 * stock_error + slack, (
        f"{what} in {dtype}: max error {ours_error:.3g} vs stock PyTorch's {stock_error:.3g} (limit 2x + {slack:.2g})"
    )


def grads(output: torch.Tensor, inputs, seed: int = 0):
    """Gradients of <output, R> for a fixed random R (same R for every backend and dtype)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(output.shape, generator=generator, dtype=torch.float64).to(output.device, output.dtype)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(output, wanted, weight)


def leaves(*tensors, dtype, requires_grad=True):
    """float64 master copies cast to dtype, as fresh leaves."""
    return [None if t is None else t.detach().to(dtype).requires_grad_(requires_grad) for t in tensors]


def check_autocast_computes_in_float32(device, backend: str, compile_backend: str | None = None) -> None:
    """Under torch.autocast (bfloat16) both ops compute in float32, with the mixed input precisions
    autocast produces (a bfloat16 tensor beside float32 parameters): the same outputs and gradients
    as float32 inputs outside autocast, a bfloat16 input's gradient rounded once. Without this the
    kernels' inner ATen calls were cast to bfloat16 behind their back and failed (found on a GPU).
    `compile_backend`: run the op under torch.compile(fullgraph=True) with that backend."""
    gen = torch.Generator().manual_seed(0)

    def master(*size):  # values a bfloat16 tensor holds exactly, so the float32 reference sees the same
        return torch.randn(*size, generator=gen).to(torch.bfloat16).float()

    mixed = (torch.bfloat16, torch.float32, torch.float32)
    cases = {
        "subkernel_tokenize": (lambda x, w, l: lk.subkernel_tokenize(x, w, l, pool="max", blend=0.5, backend=backend),
                               (master(2, 3, 28, 28), master(8, 3, 14, 14), master(49))),
        "domain_attention": (lambda v, m, r: lk.domain_attention(v, m, r, backend=backend),
                             (master(2, 17, 8), master(3, 8, 8), master(3))),
    }
    for what, (fn, masters) in cases.items():
        expected_inputs = leaves(*[t.to(device) for t in masters], dtype=torch.float32)
        expected = fn(*expected_inputs)
        expected_grads = grads(expected, expected_inputs)
        op = torch.compile(fn, backend=compile_backend, fullgraph=True) if compile_backend else fn
        inputs = [t.to(device, dtype).detach().requires_grad_() for t, dtype in zip(masters, mixed)]
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out = op(*inputs)
        got_grads = grads(out, inputs)  # backward outside autocast, as PyTorch recommends
        assert out.dtype == torch.float32, f"{what} under autocast: output dtype {out.dtype}"
        torch.testing.assert_close(out, expected, msg=lambda m: f"{what} under autocast: {m}")
        for i, (got, want) in enumerate(zip(got_grads, expected_grads)):
            assert got.dtype == inputs[i].dtype, f"{what} under autocast: grad {i} dtype {got.dtype}"
            torch.testing.assert_close(got, want.to(got.dtype), msg=lambda m: f"{what} under autocast, grad {i}: {m}")


def check_domain_attention_nonfinite_like_oracle(device, backend: str) -> None:
    """NaN and inf in the mixing logits or in a map give what the oracle gives, row for row: a
    non-finite mixing logit makes every mixing weight NaN, so every output row -- the prefix (CLS)
    rows too -- is NaN; a non-finite map entry poisons exactly the patch rows whose crop reads it."""
    gen = torch.Generator().manual_seed(0)
    h, num_prefix = 4, 2
    v = torch.randn(2, num_prefix + h * h, 5, generator=gen, dtype=torch.float64).to(device)
    maps = torch.randn(3, 2 * h, 2 * h, generator=gen, dtype=torch.float64).to(device)
    mix = torch.randn(3, generator=gen, dtype=torch.float64).to(device)
    cases = {}
    for value in (float("nan"), float("inf"), float("-inf")):
        poisoned_mix = mix.clone()
        poisoned_mix[1] = value
        cases[f"mix_logits[1] = {value}"] = (maps, poisoned_mix)
        poisoned_maps = maps.clone()
        poisoned_maps[1, h + 1, h - 1] = value  # read by some patch rows only
        cases[f"maps[1, {h + 1}, {h - 1}] = {value}"] = (poisoned_maps, mix)
    for what, (case_maps, case_mix) in cases.items():
        expected = lk.reference.domain_attention(v, case_maps, case_mix, num_prefix_tokens=num_prefix)
        out = lk.domain_attention(v, case_maps, case_mix, num_prefix_tokens=num_prefix, backend=backend)
        assert torch.equal(out.isnan(), expected.isnan()), f"{what}: NaN rows {out.isnan().all(-1)} != {expected.isnan().all(-1)}"
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, equal_nan=True, msg=lambda m: f"{what}: {m}")
    # The case the fix is about: every row, prefix rows included, is NaN.
    nan_mix = mix.clone()
    nan_mix[0] = float("nan")
    assert lk.domain_attention(v, maps, nan_mix, num_prefix_tokens=num_prefix, backend=backend).isnan().all()
