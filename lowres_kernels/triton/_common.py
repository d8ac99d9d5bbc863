"""Pieces shared by the Triton kernels: the matrix-multiply step, autotuning configs, launch helpers."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

_TL_DTYPES = {
    torch.float64: tl.float64,
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half and bfloat16 accumulate in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexpr flags of `mma` for operands of `dtype`.

    `tl.dot` has no float64 form on NVIDIA GPUs, so float64 is multiplied with FMAs. The
    interpreter's `tl.dot` mishandles bfloat16 operands, so there they are widened to float32
    first (exact, so the result equals the bf16 x bf16 -> fp32 product a GPU computes).
    """
    return {
        "ACC_DTYPE": _TL_DTYPES[accumulate_dtype(dtype)],
        "FMA_DOT": dtype == torch.float64,
        "WIDEN_DOT": INTERPRETING and dtype == torch.bfloat16,
    }


@triton.jit
def mma(acc, a, b, FMA_DOT: tl.constexpr, WIDEN_DOT: tl.constexpr):
    """acc + a @ b with a [M, K] and b [K, N] of one dtype; float32 products are exact (no TF32)."""
    if FMA_DOT:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    elif WIDEN_DOT:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


# Under the interpreter each tl operation costs the same whatever the tile size, so one config
# with tall tiles (few programs) keeps the tests fast; it still leaves several tiles in N and K.
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 64})


_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=2, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]


def _block_sum(config: triton.Config) -> int:
    return sum(v for k, v in config.kwargs.items() if k.startswith("BLOCK"))


def prune_for_float64(configs, named_args, **kwargs):
    """FMA multiplication holds a [M, K, N] product in registers: keep float64 to the smallest tiles."""
    if not any(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in named_args.values()):
        return configs
    smallest = min(_block_sum(c) for c in configs)
    return [c for c in configs if _block_sum(c) == smallest]


# The keyword arguments of @triton.autotune shared by every GEMM-shaped kernel (add `key=`): the
# GPU configs, or a single one under the interpreter.
MATMUL_AUTOTUNE = dict(
    configs=[_INTERPRETER_CONFIG] if INTERPRETING else _GPU_CONFIGS,
    prune_configs_by={"early_config_prune": prune_for_float64},
)


# The tile size in which reduction_splits' callers count output tiles and reduction blocks (the
# autotuned tile is not known before the launch).
NOMINAL_TILE = 64


def reduction_splits(output_tiles: int, reduction_blocks: int, device: torch.device) -> int:
    """How many programs share one output tile's reduction, each summing a slice of it.

    Weight-like gradients reduce over every token of the batch into a small output; splitting
    the reduction (partial sums added afterwards, deterministic) fills the GPU. The interpreter
    uses two slices so the tests exercise the split.
    """
    if device.type != "cuda":
        return max(1, min(2, reduction_blocks))
    programs_wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(reduction_blocks, triton.cdiv(programs_wanted, max(1, output_tiles))))


def device_guard(t: torch.Tensor):
    """Launch on the tensors' GPU (and its current stream), not on whichever is current."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def not_requested(like: torch.Tensor) -> torch.Tensor:
    """Placeholder returned by backward ops for a gradient the caller did not ask for."""
    return like.new_empty(0)
