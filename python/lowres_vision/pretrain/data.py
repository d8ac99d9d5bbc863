"""The corpus as torch data: a map-style dataset of (image, tokens) and the per-step batch sampler.

Batch `s` of a run is drawn from `numpy.random.default_rng([seed, step])` alone (indices without
repeats inside a batch), so a run resumed at step `s` sees the batches an uninterrupted run would,
whatever the number of workers; under DDP rank r takes every world-size-th index of the batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..models.backbone import CLIP_MEAN, CLIP_STD
from .corpus import render_sample, render_second_view

_SAMPLER_STREAM = 1  # keeps batch draws apart from the corpus's own per-sample streams


_MEAN, _STD = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]


def clip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels [..., 3, H, W] in [0, 1] -> CLIP-normalised (float32 statistics)."""
    return (pixels - _MEAN) / _STD


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised images [..., 3, H, W] -> float pixels, [0, 1] for images that came from pixels."""
    return images * _STD + _MEAN


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> CLIP-normalised float32 [3, H, W]."""
    return clip_normalise(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))


class CaptionedCorpus(Dataset):
    """Samples `start .. start + size - 1` of the corpus with `seed` (and the opt-in `scene_share` and
    `solid_share`), as (image tensor, token ids); with `second_views` also (second view tensor, has a
    second view): a scene's rendering in another style or a solid's other view, zeros and False for the
    other kinds."""

    def __init__(self, seed: int, start: int, size: int, image_size: int, context_length: int,
                 scene_share: float = 0.0, second_views: bool = False, solid_share: float = 0.0) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.seed, self.start, self.size, self.image_size = seed, start, size, image_size
        self.scene_share, self.solid_share, self.second_views = scene_share, solid_share, second_views
        self.tokenizer = SimpleTokenizer(context_length=context_length)

    def __len__(self) -> int:
        return self.size

    def _corpus_index(self, index: int) -> int:
        """The corpus-wide index of this split's sample `index`."""
        if not 0 <= index < self.size:
            raise IndexError(f"corpus index {index} outside [0, {self.size})")
        return self.start + index

    def sample(self, index: int):
        return render_sample(self.seed, self._corpus_index(index), self.image_size, self.scene_share, self.solid_share)

    def second_view(self, index: int):
        """The second rendering of sample `index` (a `Sample`), or None if it is neither a scene nor a solid."""
        return render_second_view(self.seed, self._corpus_index(index), self.image_size, self.scene_share,
                                  self.solid_share)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        sample = self.sample(index)
        image, tokens = image_to_tensor(sample.image), self.tokenizer([sample.caption])[0]
        if not self.second_views:
            return image, tokens
        second = self.second_view(index)
        if second is None:
            return image, tokens, torch.zeros_like(image), torch.tensor(False)
        return image, tokens, image_to_tensor(second.image), torch.tensor(True)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of the batches of steps `start_step .. steps - 1`."""

    def __init__(self, corpus_size: int, batch_size: int, *, seed: int, steps: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size > corpus_size:
            raise ValueError(f"batch_size {batch_size} exceeds the corpus size {corpus_size}")
        self.corpus_size, self.batch_size, self.seed = corpus_size, batch_size, seed
        self.steps, self.start_step, self.rank, self.world_size = steps, start_step, rank, world_size

    def batch(self, step: int) -> list[int]:
        """The whole (all ranks') batch of `step`."""
        rng = np.random.default_rng([self.seed, _SAMPLER_STREAM, step])
        return rng.choice(self.corpus_size, self.batch_size, replace=False).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.batch(step)[self.rank::self.world_size]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)
