"""The same image in another style: colours remapped, or redrawn as ink lines on paper, layout untouched.

The benchmark's retrieval tasks pair one layout drawn two ways (an old map and a satellite image, a
line drawing and a shaded render); what carries across is where the edges are, not the colours or
textures. `restyle` makes such pairs from any corpus image for pretraining's image-to-image term (as
SLIP adds a SimCLR term to CLIP, here with photometric changes only, so place is kept):

- every image's colours go through a random 3 x 3 mix (permutations, greys and inversions among
  them) and a random gamma per channel, and get a smooth random colour field and grain on top;
- with probability `line_share`, the image is first redrawn as its luminance edges in ink on paper
  of random colours, as a sketch is of a photograph.

It works on batches of CLIP-normalised tensors and draws from a `torch.Generator` only, which the
trainer seeds from the run's seed, the step and the rank, so a resumed run restyles as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import clip_normalise, clip_pixels


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _ink_lines(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixels [B, 3, H, W] in [0, 1] redrawn as their luminance edges, ink on paper."""
    batch = pixels.shape[0]
    grey = pixels.mean(1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T])[:, None]
    gradients = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradients.square().sum(1, keepdim=True).sqrt()
    # An edge as strong as `threshold` times the image's mean gradient is full ink.
    threshold = _uniform((batch, 1, 1, 1), 1.5, 4.0, generator)
    ink_share = (magnitude / (threshold * magnitude.mean((2, 3), keepdim=True) + 1e-6)).clamp(max=1.0)
    paper = _uniform((batch, 3, 1, 1), 0.75, 1.0, generator)
    ink = _uniform((batch, 3, 1, 1), 0.0, 0.45, generator)
    return paper * (1 - ink_share) + ink * ink_share


def _smooth_field(batch: int, size: tuple[int, int], cells: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn((batch, 3, cells, cells), generator=generator)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)


def restyle(images: torch.Tensor, generator: torch.Generator, line_share: float = 0.3) -> torch.Tensor:
    """`images` [B, 3, H, W] (CLIP-normalised) with new colours, and a `line_share` of them as ink
    lines; the same layout, CLIP-normalised."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"restyle: expected images [batch, 3, height, width], got shape {tuple(images.shape)}")
    # Drawn in float32 on the CPU whatever the input's dtype and device, and given back in them.
    pixels = clip_pixels(images.detach().cpu().float()).clamp(0, 1)
    batch = pixels.shape[0]
    as_lines = torch.rand((batch, 1, 1, 1), generator=generator) < line_share
    pixels = torch.where(as_lines, _ink_lines(pixels, generator), pixels)
    # A random colour mix: each output channel a signed blend of the inputs, rescaled into [0, 1].
    mix = torch.randn((batch, 3, 3), generator=generator)
    mixed = torch.einsum("boc,bchw->bohw", mix, pixels - 0.5)
    low = mixed.amin((1, 2, 3), keepdim=True)
    high = mixed.amax((1, 2, 3), keepdim=True)
    pixels = (mixed - low) / (high - low + 1e-6)
    gamma = torch.exp(_uniform((batch, 3, 1, 1), -0.7, 0.7, generator))
    pixels = pixels.clamp(min=0).pow(gamma)
    size = tuple(pixels.shape[-2:])
    cells = int(torch.randint(3, 9, (1,), generator=generator))
    strength = _uniform((batch, 1, 1, 1), 0.0, 0.12, generator)
    pixels = pixels + strength * _smooth_field(batch, size, cells, generator)
    pixels = pixels + _uniform((batch, 1, 1, 1), 0.0, 0.04, generator) * torch.randn(pixels.shape, generator=generator)
    return clip_normalise(pixels.clamp(0, 1)).to(device=images.device, dtype=images.dtype)
