"""The one place that decides which implementation runs an op.

`backend=` on every op (or the LOWRES_BACKEND environment variable) picks one of BACKENDS;
"auto" (the default) picks the fastest available for the tensors' device: the C++ kernels on
CPU; on NVIDIA GPUs the CUDA kernels (Triton where the extension was built without CUDA),
except where the benchmarks measured the Triton kernels faster (`triton_is_faster_for_tokenize`).
On an H100 (bench/results/cuda-nvidia-h100-80gb-hbm3.md) the CUDA kernels won forward+backward
for domain attention at every shape and for tokenization at every shape but one: average pooling
trained at batch 64.
An explicit choice that cannot run on the given device raises instead of falling back.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional

import torch

from ._library import cuda_kernels_built

try:
    from torch.fx.experimental.symbolic_shapes import guard_or_false as _guard_or_false
except ImportError:  # torch before 2.8
    _guard_or_false = bool

BACKENDS = ("cpp", "cuda", "triton", "reference")
ENV_VAR = "LOWRES_BACKEND"
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available(device: torch.device) -> bool:
    if not _TRITON_INSTALLED:
        return False
    if device.type == "cuda":
        return True
    # The Triton interpreter runs kernels on CPU tensors (used by the tests on machines without a GPU).
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    names = ["reference"]
    if device.type == "cpu":
        names.append("cpp")
    if device.type == "cuda" and cuda_kernels_built():
        names.append("cuda")
    if triton_available(device):
        names.append("triton")
    return names


# The smallest tokenization measured (in output tokens) at which Triton trained faster with
# pool="avg": 64 ViT-H/14 images (16 384 tokens), forward+backward 3.31 ms against CUDA's 4.05 ms
# on an H100 (one run, float32, gradients for the logits only). At 8 images CUDA was faster (1.36
# against 2.67 ms), and in every max-pooling case; the crossover lies somewhere in between.
TRITON_AVG_TOKENIZE_MIN_TOKENS = 64 * 16 * 16


def triton_is_faster_for_tokenize(num_tokens, pool: str, dtype: torch.dtype, trains_only_logits: bool) -> bool:
    """Whether the benchmarks measured the Triton tokenization faster than the CUDA one for a call
    like this: average pooling, float32, at least TRITON_AVG_TOKENIZE_MIN_TOKENS tokens, trained
    as in the benchmark (the logits' gradient, the patch weight frozen, the image not needing one).
    Forward-only calls stay on CUDA, whose forward was faster there. `num_tokens` may be symbolic
    under torch.compile: a size not known at trace time gives False (CUDA)."""
    return (
        pool == "avg"
        and dtype == torch.float32
        and trains_only_logits
        and _guard_or_false(num_tokens >= TRITON_AVG_TOKENIZE_MIN_TOKENS)
    )


def resolve_backend(
    op: str, backend: Optional[str], device: torch.device, *, prefer_triton: Optional[Callable[[], bool]] = None
) -> str:
    """The backend that runs `op` on `device`. `prefer_triton` (the op's measured rule, called
    only when "auto" has to choose between the CUDA and Triton kernels, so that CPU calls add no
    shape guards under torch.compile) makes "auto" pick Triton."""
    requested = backend if backend is not None else (os.environ.get(ENV_VAR) or "auto")
    if requested not in BACKENDS and requested != "auto":
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        raise ValueError(f"{op}: unknown {source}{requested!r}; choose one of {('auto',) + BACKENDS}")
    if requested == "auto":
        if device.type == "cpu":
            return "cpp"
        if device.type == "cuda":
            if cuda_kernels_built() and not (triton_available(device) and prefer_triton is not None and prefer_triton()):
                return "cuda"
            return "triton" if triton_available(device) else "reference"
        return "reference"
    if requested not in available_backends(device):
        raise RuntimeError(
            f"{op}: backend {requested!r} cannot run on {device} tensors here; "
            f"available: {available_backends(device)}"
        )
    return requested
