"""Parameter-efficient adapters for frozen ViT blocks: AdaptFormer and LoRA, and `ADAPTERS`, the registry
of adapter kinds that `inject`, the FLOP/parameter accounting and the dry-run report all read.

Both start as the identity (AdaptFormer's up projection and LoRA's B are zero), so an injected
model reproduces the frozen one exactly until training moves them.

A new kind is one class and one `ADAPTERS` entry. The class is the module that holds the kind's
parameters and provides:
    OPTIONS                              the option names `inject(adapter=dict(kind=..., ...))` accepts
    block_modules(width, **options)      the modules one block of that width gets (build on device="meta"
                                         to count without allocating)
    attach(tower, **options)             puts them into every block of a `models.tower.Tower`
    multiply_adds(num_tokens)            (instance) what one module adds to a forward over num_tokens
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class AdaptFormer(nn.Module):
    """The AdaptFormer bottleneck: `scale * up(ReLU(down(x)))`, added beside a block's MLP branch.

    The block computes `x + MLP(norm2(x)) + AdaptFormer(norm2(x))`, as the authors' release does
    (repository xiaobai1217/Low-Resource-Vision, file imagebind/models/transformer.py:
    `F.relu(norm_2(x) @ W_down) @ W_up * 0.1`). The release's projections have no biases, which is
    the default here; `bias=True` adds them to both projections, as in the AdaptFormer paper
    (arXiv 2205.13535). `down` is kaiming-initialised, `up` (and any bias) starts at zero.
    """

    OPTIONS = frozenset({"bottleneck", "scale", "bias"})

    def __init__(self, width: int, bottleneck: int = 2, scale: float = 0.1, bias: bool = False, *,
                 device=None, dtype=None) -> None:
        super().__init__()
        if width <= 0 or bottleneck <= 0:
            raise ValueError(f"AdaptFormer: width and bottleneck must be positive, got width={width}, bottleneck={bottleneck}")
        if not isinstance(bias, bool):
            raise ValueError(f"AdaptFormer: bias must be true or false, got {bias!r}")
        factory = {"device": device, "dtype": dtype}
        self.scale = scale
        self.down = nn.Linear(width, bottleneck, bias=bias, **factory)
        self.up = nn.Linear(bottleneck, width, bias=bias, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(x)))

    def multiply_adds(self, num_tokens: int) -> int:
        return num_tokens * (self.down.in_features + self.up.out_features) * self.down.out_features

    @classmethod
    def block_modules(cls, width: int, **options) -> List[nn.Module]:
        return [cls(width, **options)]

    @classmethod
    def attach(cls, tower, **options) -> None:
        """One AdaptFormer beside the MLP of every block."""
        for index in range(len(tower.blocks)):
            block = tower.block(index, create=True)
            if block.adapter is not None:
                raise ValueError(f"inject: block {index} already has an adapter")
            reference = next(block.block.parameters())
            block.adapter = cls(block.width, **options, device=reference.device, dtype=reference.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, bias={self.up.bias is not None}"


class LoRA(nn.Module):
    """A low-rank update of a frozen weight, registered as a `torch.nn.utils.parametrize` parametrization.

    The weight's rows are split into `num_blocks` equal blocks (3 for a fused q/k/v projection,
    1 for an output projection); each block listed in `targets` becomes
    `W_block + (alpha / rank) * B @ A` with A [rank, in] kaiming-initialised and B [rows, rank] zero.
    Parametrizing the weight (rather than wrapping a Linear) also covers `nn.MultiheadAttention`,
    which reads `in_proj_weight` and `out_proj.weight` functionally.
    """

    OPTIONS = frozenset({"rank", "alpha", "targets"})
    TARGETS = ("q", "k", "v", "out")  # what `targets` may name: the fused q/k/v rows and the output projection

    def __init__(self, weight_shape: Sequence[int], rank: int = 8, alpha: float | None = None, *,
                 num_blocks: int = 1, targets: Sequence[int] = (0,), device=None) -> None:
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
        self.lora_a = nn.ParameterList(nn.Parameter(torch.empty(rank, in_features, device=device)) for _ in self.targets)
        self.lora_b = nn.ParameterList(nn.Parameter(torch.zeros(rows, rank, device=device)) for _ in self.targets)
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

    def multiply_adds(self, num_tokens: int) -> int:
        # The update is merged into the weight once per forward (B @ A per target), whatever the tokens.
        return sum(b.shape[0] * self.rank * a.shape[1] for a, b in zip(self.lora_a, self.lora_b))

    @classmethod
    def _split_targets(cls, targets: Sequence[str]) -> Tuple[List[int], bool]:
        """("q", "v", "out") -> the q/k/v row blocks to adapt ([0, 2]) and whether the output projection is."""
        targets = tuple(targets)
        if not targets or not set(targets) <= set(cls.TARGETS):
            raise ValueError(f"LoRA targets must be a non-empty subset of {cls.TARGETS}, got {targets}")
        return [cls.TARGETS.index(t) for t in targets if t != "out"], "out" in targets

    @classmethod
    def block_modules(cls, width: int, targets: Sequence[str] = ("q", "v", "out"), device=None, **options) -> List[nn.Module]:
        qkv_targets, out = cls._split_targets(targets)
        modules = [cls((3 * width, width), num_blocks=3, targets=qkv_targets, device=device, **options)] if qkv_targets else []
        return modules + ([cls((width, width), device=device, **options)] if out else [])

    @classmethod
    def attach(cls, tower, targets: Sequence[str] = ("q", "v", "out"), **options) -> None:
        """LoRA on the chosen attention projections of every block (parametrizations of the frozen weights)."""
        qkv_targets, out = cls._split_targets(targets)
        for index in range(len(tower.blocks)):
            frozen = tower.frozen_block(tower.block(index, create=False))
            if qkv_targets:
                add_lora(*tower.qkv_owner(frozen), num_blocks=3, targets=qkv_targets, **options)
            if out:
                add_lora(*tower.out_owner(frozen), **options)

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


ADAPTERS = {"adaptformer": AdaptFormer, "lora": LoRA}  # kind -> class; see the module docstring


def adapter_kind(adapter: Mapping[str, Any]) -> Tuple[type, dict]:
    """`dict(kind="adaptformer", bottleneck=4)` -> (AdaptFormer, {"bottleneck": 4}), checking kind and option names."""
    if not isinstance(adapter, Mapping):
        raise ValueError(f"adapter must be a dict of options or None, got {type(adapter).__name__}")
    kind = adapter.get("kind")
    if kind not in ADAPTERS:
        raise ValueError(f"adapter kind must be one of {sorted(ADAPTERS)}, got {kind!r}")
    cls = ADAPTERS[kind]
    options = {name: value for name, value in adapter.items() if name != "kind"}
    unknown = set(options) - cls.OPTIONS
    if unknown:
        raise ValueError(f"unknown {kind} adapter options {sorted(unknown)}; allowed: {sorted(cls.OPTIONS | {'kind'})}")
    return cls, options
