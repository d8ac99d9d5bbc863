"""The kernel test harness: the backends under test, one tolerance table, and the comparison with
the naive float64 oracles (lowres_kernels.reference) that every backend's tests use.

A test body takes a `target` (a backend on a device, `target_params()`) and runs the same checks
whatever the backend, as pytorch/extension-cpp runs one body on CPU and CUDA. Targets that cannot
run here skip with the reason: the CUDA kernels without a GPU (or a build without them), Triton on
CPU unless the whole process runs the Triton interpreter (`TRITON_INTERPRET=1`, which must be set
before triton is first imported; scripts/test.sh runs the Triton targets that way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lowres_kernels as lk
from lowres_kernels._library import cuda_kernels_built

REDUCED_PRECISION = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# The tolerance table, for every backend.
# float64/float32: (atol, rtol) against the float64 oracle; atol is relative to the largest
# oracle magnitude.
FULL_PRECISION_TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-4),
}
# float16/bfloat16 (flash-attention's rule): our max error against the float64 oracle is at most
# twice the error of the same computation done by stock PyTorch in that precision, plus this
# slack, relative to the largest oracle magnitude (for values near zero).
REDUCED_PRECISION_SLACK = {
    torch.float16: 1e-3,
    torch.bfloat16: 1e-3,
}


GPU = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Target:
    """One implementation of the ops on one device."""

    backend: str
    device: str

    def __str__(self) -> str:
        return f"{self.backend}-{self.device}"

    @property
    def multiplies_in_input_dtype(self) -> bool:
        """The Triton kernels round their matrix operands (the combined filter, the attention matrix
        P) to the input dtype, as tensor cores take them; the C++ and CUDA kernels multiply in
        float32 (float64 for float64 inputs)."""
        return self.backend == "triton"

    @property
    def interpreted(self) -> bool:
        """Triton kernels run by the interpreter on CPU: correct but slow, so the largest shapes skip."""
        return self.backend == "triton" and self.device == "cpu"

    def skip_reason(self) -> str | None:
        if self.device == "cuda" and not GPU:
            return "needs a CUDA GPU"
        if self.backend == "cuda" and not cuda_kernels_built():
            return "lowres_kernels was built without its CUDA kernels (LOWRES_WITH_CUDA)"
        if self.backend == "triton":
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                return "triton is not installed"
            if self.device == "cpu" and (GPU or not INTERPRETING):
                return (
                    "Triton on CPU runs under the interpreter only: "
                    "`TRITON_INTERPRET=1 pytest tests/test_kernel_backends.py -k triton` on a machine without a GPU"
                )
        return None

    def ops(self):
        """The namespace holding this backend's registered ops (the same op names in each)."""
        if self.backend == "triton":
            import lowres_kernels.triton.domain_attention  # noqa: F401  (registers the Triton ops)
            import lowres_kernels.triton.subkernel_tokenize  # noqa: F401

            return torch.ops.lowres_triton
        return torch.ops.lowres


TARGETS = (Target("cpp", "cpu"), Target("cuda", "cuda"), Target("triton", "cuda"), Target("triton", "cpu"))


def target_params(targets=TARGETS):
    return [
        pytest.param(t, id=str(t), marks=pytest.mark.skipif(t.skip_reason() is not None, reason=t.skip_reason() or ""))
        for t in targets
    ]


def assert_close_to_oracle(ours: torch.Tensor, oracle64: torch.Tensor, stock: torch.Tensor | None, dtype, what: str):
    """`ours` against the float64 oracle by the tolerance table; `stock` is the oracle run in `dtype`
    (needed for float16/bfloat16 only)."""
    assert ours.dtype == dtype, f"{what}: expected dtype {dtype}, got {ours.dtype}"
    assert ours.shape == oracle64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(oracle64.shape)}"
    scale = max(1.0, oracle64.abs().max().item()) if oracle64.numel() else 1.0
    if dtype in FULL_PRECISION_TOLERANCE:
        atol, rtol = FULL_PRECISION_TOLERANCE[dtype]
        torch.testing.assert_close(ours.double(), oracle64, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")
        return
    assert stock is not None
    ours_error = (ours.double() - oracle64).abs().max().item()
    stock_error = (stock.double() - oracle64).abs().max().item()
    slack = REDUCED_PRECISION_SLACK[dtype] * scale
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


def check_against_oracle(ours_fn, oracle_fn, masters, dtype, names, target, *, check_grads=True):
    """ours_fn in `dtype` against oracle_fn in float64, forward and every gradient; for
    float16/bfloat16 also oracle_fn in `dtype` (the stock error). `masters`: float64 tensors (or
    None) on the device under test, named by `names`.

    The oracle sees the inputs rounded to `dtype`, as ours does, so only the computation's own
    rounding counts -- except for a target that multiplies in the input dtype
    (Target.multiplies_in_input_dtype), whose operand rounding is of the size of the input
    rounding: there the oracle sees the float64 masters, and the input rounding is part of both
    our error and the stock error."""
    rounded = [None if t is None else t.to(dtype) for t in masters]
    inputs = leaves(*rounded, dtype=dtype)
    oracle_inputs = leaves(*(masters if target.multiplies_in_input_dtype else rounded), dtype=torch.float64)
    ours, oracle = ours_fn(*inputs), oracle_fn(*oracle_inputs)
    stock = stock_inputs = None
    if dtype in REDUCED_PRECISION:
        stock_inputs = leaves(*rounded, dtype=dtype)
        stock = oracle_fn(*stock_inputs)
    assert_close_to_oracle(ours, oracle.detach(), stock, dtype, "output")
    if not check_grads:
        return
    present = [name for name, t in zip(names, masters) if t is not None]
    stock_grads = grads(stock, stock_inputs) if stock is not None else [None] * len(present)
    for name, a, o, s in zip(present, grads(ours, inputs), grads(oracle, oracle_inputs), stock_grads):
        assert_close_to_oracle(a, o, s, dtype, f"grad of {name}")


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


class OpCalls(TorchDispatchMode):
    """Records the lowres ops that run inside it, with their arguments and outputs:
    `with OpCalls() as calls: ...`, then `calls.named("lowres._subkernel_tokenize_backward")`."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func).startswith("lowres"):
            self.calls.append((str(func).removesuffix(".default"), args, out))
        return out

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def named(self, name: str) -> list[tuple]:
        """(args, outputs) of every call of `name`."""
        return [(args, out) for called, args, out in self.calls if called == name]
