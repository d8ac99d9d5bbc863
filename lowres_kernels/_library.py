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


# Read once, as a plain bool that torch.compile folds to a constant: Dynamo cannot trace the
# dispatcher query itself (an opaque torch._C call).
_CUDA_KERNELS_BUILT = has_kernel("domain_attention", "CUDA")


def cuda_kernels_built() -> bool:
    return _CUDA_KERNELS_BUILT
