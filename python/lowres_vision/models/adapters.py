"""Parameter-efficient adapters for frozen ViT blocks: AdaptFormer and LoRA.

Both start as the identity (AdaptFormer's up projection and LoRA's B are zero), so an injected
model reproduces the frozen one exactly until training moves them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class AdaptFormer(nn.Module):
    """The AdaptFormer bottleneck: `scale * up(ReLU(down(x)))`, added beside a block's MLP branch.

    The block computes `x + MLP(norm2(x)) + AdaptFormer(norm2(x))`, as the authors' release does.
    `down` is kaiming-initialised, `up` (weight and bias) starts at zero.
    """

    def __init__(self, width: int, bottleneck: int = 2, scale: float = 0.1) -> None:
        super().__init__()
        if width <= 0 or bottleneck <= 0:
            raise ValueError(f"AdaptFormer: width and bottleneck must be positive, got width={width}, bottleneck={bottleneck}")
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(x)))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class LoRA(nn.Module):
    """A low-rank update of a frozen weight, registered as a `torch.nn.utils.parametrize` parametrization.

    The weight's rows are split into `num_blocks` equal blocks (3 for a fused q/k/v projection,
    1 for an output projection); each block listed in `targets` becomes
    `W_block + (alpha / rank) * B @ A` with A [rank, in] kaiming-initialised and B [rows, rank] zero.
    Parametrizing the weight (rather than wrapping a Linear) also covers `nn.MultiheadAttention`,
    which reads `in_proj_weight` and `out_proj.weight` functionally.
    """

    def __init__(self, weight_shape: Sequence[int], rank: int = 8, alpha: float | None = None, *,
                 num_blocks: int = 1, targets: Sequence[int] = (0,)) -> None:
        super().__init__()
        out_features, in_features = weight_shape
        if rank <= 0:
            raise ValueError(f"LoRA: rank must be positive, got {rank}")
        if out_features % num_blocks:
            raise ValueError(f"LoRA: weight rows {out_features} do not split into num_blocks={num_blocks}")
        if not targets or any(not 0 <= t < num_blocks for t in targets):
            raise ValueError(f"LoRA: targets {tuple(targets)} must be non-empty indices below num_blocks={num_blocks}")
        self.rank, self.alpha, self.num_blocks = rank, float(rank if alpha is None else alpha), num_blocks
        self.targets = tuple(sorted(set(targets)))
        rows = out_features // num_blocks
        self.lora_a = nn.ParameterList(nn.Parameter(torch.empty(rank, in_features)) for _ in self.targets)
        self.lora_b = nn.ParameterList(nn.Parameter(torch.zeros(rows, rank)) for _ in self.targets)
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = list(weight.chunk(self.num_blocks, dim=0))
        for target, a, b in zip(self.targets, self.lora_a, self.lora_b):
            blocks[target] = blocks[target] + self.scaling * (b.to(weight.dtype) @ a.to(weight.dtype))
        return torch.cat(blocks, dim=0)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, num_blocks={self.num_blocks}, targets={self.targets}"


def add_lora(module: nn.Module, name: str, rank: int = 8, alpha: float | None = None, *,
             num_blocks: int = 1, targets: Sequence[int] = (0,)) -> LoRA:
    """Parametrizes `module.<name>` (a frozen 2-d weight) with a new `LoRA` on the same device and dtype."""
    weight = getattr(module, name)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"add_lora: {type(module).__name__}.{name} must be a 2-d weight, got {getattr(weight, 'shape', weight)}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"add_lora: {type(module).__name__}.{name} is already parametrized (LoRA injected twice?)")
    lora = LoRA(weight.shape, rank, alpha, num_blocks=num_blocks, targets=targets).to(weight.device, weight.dtype)
    parametrize.register_parametrization(module, name, lora)
    return lora
