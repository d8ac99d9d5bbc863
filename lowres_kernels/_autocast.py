"""How both ops meet torch.autocast: they compute in float32, as autocast runs softmax.

Both ops are softmax-weighted mixes, and their kernels call ATen ops (mm, einsum) that autocast
would otherwise cast to half precision behind the kernels' back. So, under autocast:
- the registered implementations (compiled and Triton) get float32 inputs and run with autocast
  off inside (`register_float32_autocast`);
- the functional entry points cast first (`float32_under_autocast`), so that the mixed precisions
  autocast produces (a bfloat16 v beside float32 maps) pass the dtype checks, and run the reference
  backend with autocast off (`autocast_off`), so every backend returns the same dtype.
"""

from __future__ import annotations

import contextlib

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def register_float32_autocast(*ops) -> None:
    for op in ops:
        for device_type in _AUTOCAST_DEVICES:
            torch.library.register_autocast(op, device_type, torch.float32)


def _autocast_enabled(device_type: str) -> bool:
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def float32_under_autocast(*tensors):
    """`tensors` as the registered ops will see them: under autocast on the first tensor's device,
    floating tensors other than float64 become float32 (the rule torch.library.register_autocast
    applies); otherwise unchanged. Anything that is not a tensor passes through to the checks."""
    if not isinstance(tensors[0], torch.Tensor) or not _autocast_enabled(tensors[0].device.type):
        return tensors
    return tuple(
        t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def autocast_off(device_type: str):
    return torch.autocast(device_type, enabled=False) if _autocast_enabled(device_type) else contextlib.nullcontext()
