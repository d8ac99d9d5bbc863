"""Shared helpers of the kernel tests: tolerances per dtype and the reduced-precision rule."""

from __future__ import annotations

import torch

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
