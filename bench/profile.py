"""Runs each op's forward+backward at one benchmark shape a few times, for a profiler to watch.

    python -m bench.profile --shape vit_h14_b8 --backend cuda
    ncu --clock-control none --kernel-name regex:'tokenize|grad_kernel|attention|diagonals' python -m bench.profile --calls 1

The inputs are the benchmark's own (bench/harness.py), so a profile explains the numbers in
bench/results/. Each op's calls sit in an NVTX range named after the op (nsys, ncu --nvtx).
"""

from __future__ import annotations

import argparse

import torch

import lowres_kernels as lk

from . import harness


def shapes() -> dict[str, harness.ViTShape]:
    every = harness.bench_shapes("cuda", smoke=False) + harness.bench_shapes("cpu", smoke=True)
    return {shape.name: shape for shape in every}


def _named_range(name: str, device: torch.device):
    return torch.cuda.nvtx.range(name) if device.type == "cuda" else torch.autograd.profiler.record_function(name)


def run(shape: harness.ViTShape, backend: str, device: torch.device, calls: int) -> None:
    for op in harness.OPS.values():
        work = harness.op_inputs(op, shape, device)
        work.kwargs["backend"] = backend
        step = harness.pass_callable(work, harness.FORWARD_BACKWARD, device)
        with _named_range(op.name, device):
            for _ in range(calls):
                step()
        print(f"{op.name}: {calls} forward+backward calls at {shape.label}, backend {backend}")


def main(argv=None) -> None:
    known = shapes()
    headline = next(name for name, s in known.items() if s.label == f"{harness.HEADLINE_MODEL}, batch {harness.HEADLINE_BATCH}")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(known), default=headline)
    parser.add_argument("--backend", choices=lk.BACKENDS, default="cuda")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--calls", type=int, default=2, help="forward+backward calls per op (the first also warms up)")
    args = parser.parse_args(argv)
    run(known[args.shape], args.backend, torch.device(args.device), args.calls)


if __name__ == "__main__":
    main()
