"""pretrain/restyle.py: the same layout in new colours or as ink lines (the pretraining term built on it is
tested in test_pretrain.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from lowres_vision.pretrain.data import CaptionedCorpus, clip_pixels, image_to_tensor
from lowres_vision.pretrain.domain_shift import detail_layout
from lowres_vision.pretrain.restyle import restyle

pytestmark = pytest.mark.usefixtures("single_thread")


def _corpus_batch(count: int = 24, size: int = 56) -> torch.Tensor:
    corpus = CaptionedCorpus(0, 0, count, size, 40)
    return torch.stack([corpus[i][0] for i in range(count)])


def _square(size: int = 56, box: tuple[int, int, int, int] = (14, 14, 42, 42)) -> torch.Tensor:
    image = Image.new("RGB", (size, size), (40, 90, 200))
    ImageDraw.Draw(image).rectangle(box, fill=(230, 200, 30))
    return image_to_tensor(image)[None]


@pytest.mark.parametrize("line_share", [0.0, 1.0])
def test_restyled_images_keep_their_layout_and_change_their_colours(line_share):
    images = _corpus_batch()
    restyled = restyle(images, torch.Generator().manual_seed(0), line_share=line_share)
    assert restyled.shape == images.shape and restyled.dtype == images.dtype
    # Each restyled image's detail layout finds its own original among the 24 (chance 1 in 24).
    original, new = detail_layout(images, 4), detail_layout(restyled, 4)
    found = (new @ original.T).argmax(1).eq(torch.arange(len(images))).float().mean().item()
    assert found >= 0.75, found
    # The colours are new: the mean colour moves by more than a tenth of the range on average.
    shift = (clip_pixels(restyled).mean((2, 3)) - clip_pixels(images).mean((2, 3))).abs().amax(1).mean().item()
    assert shift > 0.1, shift


def test_ink_lines_leave_flat_areas_as_paper_and_draw_the_edges():
    restyled = clip_pixels(restyle(_square(), torch.Generator().manual_seed(3), line_share=1.0))[0]
    inside, outside, edge = restyled[:, 28, 28], restyled[:, 4, 4], restyled[:, 28, 14]
    assert torch.allclose(inside, outside, atol=0.1)  # both paper: the square's fill is gone
    assert (edge - inside).abs().max() > 0.2  # its outline is ink


def test_restyling_is_fixed_by_the_generator_and_checks_its_input():
    images = _corpus_batch(6)
    first = restyle(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, restyle(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, restyle(images, torch.Generator().manual_seed(6)))
    double = restyle(images.double(), torch.Generator().manual_seed(5), line_share=1.0)
    assert double.dtype == torch.float64 and double.shape == images.shape
    with pytest.raises(ValueError, match=r"restyle: expected images \[batch, 3, height, width\], got shape \(3, 56, 56\)"):
        restyle(images[0], torch.Generator())
