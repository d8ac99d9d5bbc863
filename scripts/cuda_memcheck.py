"""A small forward+backward of every GPU kernel, for `compute-sanitizer` (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/cuda_memcheck.py [--backend cuda]

Shapes are small and deliberately ragged (widths and grids that are not multiples of any tile, a
non-square image, 0 and 3 prefix tokens) so every boundary path of the kernels runs.
"""

from __future__ import annotations

import argparse

import torch

import lowres_kernels as lk


def tokenize_cases():
    # (batch, height, width, channels out, patch, sub, step)
    yield 2, 56, 42, 40, 14, 7, 2
    yield 1, 32, 48, 24, 16, 8, 2


def attention_cases():
    # (batch, grid, width, maps, prefix tokens)
    yield 2, 5, 40, 3, 0
    yield 2, 14, 72, 10, 3


def run(backend: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)

    def randn(*size, grad=False):
        return torch.randn(*size, generator=gen).to("cuda", dtype).requires_grad_(grad)

    for batch, height, width, channels, patch, sub, step in tokenize_cases():
        x, weight = randn(batch, 3, height, width, grad=True), randn(channels, 3, patch, patch, grad=True)
        logits, bias = randn(49, grad=True), randn(channels, grad=True)
        for pool, blend in (("max", 1.0), ("avg", 0.5), ("max", 0.3)):
            out = lk.subkernel_tokenize(x, weight, logits, bias, sub=sub, step=step, pool=pool, blend=blend,
                                        backend=backend)
            torch.autograd.grad(out, (x, weight, logits, bias), torch.randn_like(out))
    for batch, grid, width, num_maps, prefix in attention_cases():
        v = randn(batch, prefix + grid * grid, width, grad=True)
        maps, mix = randn(num_maps, 2 * grid, 2 * grid, grad=True), randn(num_maps, grad=True)
        out = lk.domain_attention(v, maps, mix, num_prefix_tokens=prefix, backend=backend)
        torch.autograd.grad(out, (v, maps, mix), torch.randn_like(out))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=("cuda", "triton"),
                        help="repeatable; default: every GPU backend available")
    parser.add_argument("--dtype", action="append", choices=("float32", "float16", "bfloat16", "float64"))
    args = parser.parse_args()
    backends = args.backend or [b for b in ("cuda", "triton") if b in lk.available_backends("cuda")]
    for backend in backends:
        for dtype in args.dtype or ("float32", "bfloat16"):
            run(backend, getattr(torch, dtype))
            print(f"{backend} {dtype}: forward+backward of both ops ran")


if __name__ == "__main__":
    main()
