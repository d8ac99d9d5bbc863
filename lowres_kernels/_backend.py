"""The one place that decides which implementation runs an op.

`backend=` on every op (or the LOWRES_BACKEND environment variable) picks one of BACKENDS;
"auto" (the default) picks the fastest available for the tensors' device: the C++ kernels
on CPU, the CUDA kernels on NVIDIA GPUs (Triton where the extension was built without CUDA):
on an H200 the CUDA kernels beat the Triton ones for both ops at every benchmarked shape
(bench/results/cuda-nvidia-h200.md), though for tokenization that Triton run still carried a
host overhead since removed: to be measured again.
An explicit choice that cannot run on the given device raises instead of falling back.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from ._library import cuda_kernels_built

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


def resolve_backend(op: str, backend: Optional[str], device: torch.device) -> str:
    requested = backend if backend is not None else (os.environ.get(ENV_VAR) or "auto")
    if requested not in BACKENDS and requested != "auto":
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        raise ValueError(f"{op}: unknown {source}{requested!r}; choose one of {('auto',) + BACKENDS}")
    if requested == "auto":
        if device.type == "cpu":
            return "cpp"
        if device.type == "cuda":
            if cuda_kernels_built():
                return "cuda"
            return "triton" if triton_available(device) else "reference"
        return "reference"
    if requested not in available_backends(device):
        raise RuntimeError(
            f"{op}: backend {requested!r} cannot run on {device} tensors here; "
            f"available: {available_backends(device)}"
        )
    return requested
