"""Loads the compiled operator library (csrc/) into torch.ops.lowres."""

import glob
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load() -> str:
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")))
    if not candidates:
        raise ImportError(
            "lowres_kernels: the native extension lowres_kernels/_C*.so is not built. Install the "
            "package with `pip install --no-build-isolation .` (torch must be installed first)."
        )
    torch.ops.load_library(candidates[0])
    return candidates[0]


LIBRARY_PATH = _load()


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `lowres::<op>` has a kernel registered for `dispatch_key` ("CPU", "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lowres::{op}", dispatch_key)


# Read once: a plain bool that torch.compile can constant-fold (the dispatcher query itself
# returns a non-tensor, which Dynamo cannot trace).
_CUDA_KERNELS_BUILT = has_kernel("domain_attention", "CUDA")


def cuda_kernels_built() -> bool:
    return _CUDA_KERNELS_BUILT


def compute_in_float32_under_autocast(*ops) -> None:
    """Under torch.autocast, `ops` get float32 inputs and run with autocast off inside.

    Both ops are softmax-weighted mixes, and autocast runs softmax in float32; their kernels also
    call ATen ops (mm, einsum) that autocast would otherwise cast to half precision behind the
    kernel's back.
    """
    for op in ops:
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(op, device_type, torch.float32)
