"""Drop-in torch.nn modules. They hold parameters and configuration only; the ops do the work."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ._validation import check_int, check_subkernel_options
from .ops import domain_attention, subkernel_tokenize


class SubKernelPatchEmbed(nn.Module):
    """A ViT patch embedding (conv, kernel = stride = q) with sub-kernel tokenization.

    The patch filter (and bias) stay frozen; only the T sub-kernel logits are learned,
    initialised to ones as in the authors' release. Output [B, D, H/q, W/q], like the conv.
    Build it around an existing frozen conv with `SubKernelPatchEmbed.from_conv(conv)`.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        patch_size: int,
        *,
        bias: bool = False,
        sub: int = 7,
        step: int = 2,
        pool: str = "max",
        blend: float = 1.0,
        num_subkernels: int = 49,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        # Options that cannot work with this patch size fail here, not at the first forward.
        check_subkernel_options("SubKernelPatchEmbed", patch_size, sub, step, num_subkernels, pool, blend)
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.embed_dim, self.patch_size = in_channels, embed_dim, patch_size
        self.sub, self.step, self.pool, self.blend, self.backend = sub, step, pool, blend, backend
        weight = torch.empty(embed_dim, in_channels, patch_size, patch_size, **factory)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.weight = nn.Parameter(weight, requires_grad=False)
        if bias:
            bound = 1.0 / math.sqrt(in_channels * patch_size * patch_size)
            self.bias = nn.Parameter(torch.empty(embed_dim, **factory).uniform_(-bound, bound), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.logits = nn.Parameter(torch.ones(num_subkernels, **factory))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> "SubKernelPatchEmbed":
        """Wraps a patch-embedding conv; its weight and bias are shared (not copied) and frozen."""
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"SubKernelPatchEmbed.from_conv: expected an nn.Conv2d, got {type(conv).__name__}")
        kh, kw = conv.kernel_size
        if kh != kw or tuple(conv.stride) != (kh, kw) or tuple(conv.padding) != (0, 0) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
            raise ValueError(
                "SubKernelPatchEmbed.from_conv: the conv must be a patch embedding (square kernel, stride = "
                f"kernel, no padding, dilation 1, groups 1), got {conv}"
            )
        module = cls(conv.in_channels, conv.out_channels, kh, bias=False, device="meta", **options)
        module.logits = nn.Parameter(torch.ones_like(module.logits, device=conv.weight.device, dtype=conv.weight.dtype))
        module.weight = conv.weight
        module.weight.requires_grad_(False)
        if conv.bias is not None:
            module.bias = conv.bias
            module.bias.requires_grad_(False)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cast = lambda t: None if t is None else t.to(x.dtype)  # noqa: E731 - parameters follow the input's dtype
        return subkernel_tokenize(
            x, cast(self.weight), cast(self.logits), cast(self.bias),
            sub=self.sub, step=self.step, pool=self.pool, blend=self.blend, backend=self.backend,
        )

    @torch.no_grad()
    def subkernel_weights(self) -> torch.Tensor:
        """softmax(logits) as an n x n grid (what the plots show)."""
        n = math.isqrt(self.logits.numel())
        return torch.softmax(self.logits.float(), 0).view(n, n)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.embed_dim}, patch_size={self.patch_size}, sub={self.sub}, step={self.step}, "
            f"pool={self.pool!r}, blend={self.blend}, num_subkernels={self.logits.numel()}, bias={self.bias is not None}"
        )


class DomainAttention(nn.Module):
    """Global domain attention: C learned 2h x 2h maps, cropped per token, softmaxed and mixed.

    forward(v, proj) returns alpha * proj(P @ v), with v the value projection of the frozen
    block's normed input (all heads, full width) and proj that attention's output projection;
    the caller adds the result to the block's residual stream.

    `init="ones"` (the default) starts maps, mixing logits and alpha at ones, as the authors' release
    does (repository xiaobai1217/Low-Resource-Vision, file imagebind/models/imagebind_model.py).
    The C maps then receive identical gradients, the mixing logits too, and all stay identical
    through training: the C maps act as one. `init="random"` breaks that symmetry: the maps start at
    ones plus N(0, RANDOM_INIT_STD^2) noise drawn from torch's global generator (seed it, e.g. with
    `torch.manual_seed`, for a reproducible start); mixing logits and alpha still start at ones.
    """

    INITS = ("ones", "random")
    RANDOM_INIT_STD = 0.02

    def __init__(
        self,
        num_maps: int = 10,
        grid_size: int = 16,
        num_prefix_tokens: int = 1,
        *,
        init: str = "ones",
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"DomainAttention: init must be one of {self.INITS}, got {init!r}")
        check_int("DomainAttention", "num_maps", num_maps, least=1)
        check_int("DomainAttention", "grid_size", grid_size, least=1)
        check_int("DomainAttention", "num_prefix_tokens", num_prefix_tokens, least=0)
        factory = {"device": device, "dtype": dtype}
        self.num_maps, self.grid_size, self.num_prefix_tokens, self.backend = num_maps, grid_size, num_prefix_tokens, backend
        self.init = init
        maps = torch.ones(num_maps, 2 * grid_size, 2 * grid_size, **factory)
        if init == "random":
            maps.add_(torch.randn_like(maps), alpha=self.RANDOM_INIT_STD)
        self.maps = nn.Parameter(maps)
        self.mix_logits = nn.Parameter(torch.ones(num_maps, **factory))
        self.alpha = nn.Parameter(torch.ones((), **factory))

    def forward(self, v: torch.Tensor, proj: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        mixed = domain_attention(
            v, self.maps.to(v.dtype), self.mix_logits.to(v.dtype),
            num_prefix_tokens=self.num_prefix_tokens, backend=self.backend,
        )
        if proj is not None:
            mixed = proj(mixed)
        return self.alpha.to(mixed.dtype) * mixed

    def extra_repr(self) -> str:
        return (f"num_maps={self.num_maps}, grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}, "
                f"init={self.init!r}")
