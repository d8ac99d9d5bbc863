"""pretrain/restyle.py: the same layout in new colours or as ink lines, and the pretraining term built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from lowres_vision.pretrain import PretrainConfig, pretrain, trainer
from lowres_vision.pretrain.data import CaptionedCorpus, StepBatchSampler, image_to_tensor
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


def _pixels(images: torch.Tensor) -> torch.Tensor:
    from lowres_vision.models.backbone import CLIP_MEAN, CLIP_STD

    return images * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]


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
    shift = (_pixels(restyled).mean((2, 3)) - _pixels(images).mean((2, 3))).abs().amax(1).mean().item()
    assert shift > 0.1, shift


def test_ink_lines_leave_flat_areas_as_paper_and_draw_the_edges():
    restyled = _pixels(restyle(_square(), torch.Generator().manual_seed(3), line_share=1.0))[0]
    inside, outside, edge = restyled[:, 28, 28], restyled[:, 4, 4], restyled[:, 28, 14]
    assert torch.allclose(inside, outside, atol=0.1)  # both paper: the square's fill is gone
    assert (edge - inside).abs().max() > 0.2  # its outline is ink


def test_restyling_is_fixed_by_the_generator_and_checks_its_input():
    images = _corpus_batch(6)
    first = restyle(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, restyle(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, restyle(images, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match=r"restyle: expected images \[batch, 3, height, width\], got shape \(3, 56, 56\)"):
        restyle(images[0], torch.Generator())


def _config(out: Path, **overrides) -> PretrainConfig:
    from tests.app.test_pretrain import TINY

    return PretrainConfig(out=str(out), **{**TINY, **overrides})


def test_the_restyle_term_is_the_infonce_between_each_image_and_its_restyled_copy(tmp_path):
    import open_clip

    from tests.app.test_pretrain import _clip_loss_by_hand, _log

    cfg = _config(tmp_path / "run", steps=2, restyle_weight=0.5)
    corpus = CaptionedCorpus(cfg.seed, 0, cfg.corpus_size, cfg.image_size, cfg.context_length)
    torch.manual_seed(cfg.seed)
    initial = open_clip.model.CLIP(**cfg.model_config()).eval()
    pretrain(cfg)
    first = StepBatchSampler(cfg.corpus_size, cfg.batch_size, seed=cfg.seed, steps=1).batch(0)
    images, tokens = (torch.stack(parts) for parts in zip(*(corpus[i] for i in first)))
    restyled = restyle(images, trainer.restyle_generator(cfg, 0, 0))
    with torch.no_grad():
        clip_loss = _clip_loss_by_hand(initial, images, tokens)
        term = trainer.view_loss(initial.encode_image(images), initial.encode_image(restyled), 0.1).item()
    record = _log(tmp_path / "run")[0]
    assert record["clip_loss"] == pytest.approx(clip_loss, abs=1e-4)
    assert record["restyle_loss"] == pytest.approx(term, abs=1e-4)
    assert record["loss"] == pytest.approx(clip_loss + 0.5 * term, abs=2e-4)
    saved = json.loads((tmp_path / "run" / "pretrain_config.json").read_text())
    assert saved["restyle_weight"] == 0.5


def test_training_with_the_restyle_term_keeps_restyled_copies_near_their_originals(tmp_path):
    """CLIP's loss alone tells images apart by colour, so a restyled copy ends far from its original (the term on
    the 32 training images well above ln 32, what a uniform guess scores); with the term it does not."""
    import math

    import open_clip

    def restyle_term(run: Path) -> float:
        model = open_clip.create_model(f"local-dir:{run}").eval()
        images = _corpus_batch(32, 56)
        with torch.no_grad():
            restyled = restyle(images, torch.Generator().manual_seed(99))
            return trainer.view_loss(model.encode_image(images), model.encode_image(restyled), 0.1).item()

    settings = dict(steps=20, batch_size=16, image_size=56, checkpoint_every=0)
    pretrain(_config(tmp_path / "plain", **settings))
    pretrain(_config(tmp_path / "restyle", restyle_weight=1.0, **settings))
    plain, trained = restyle_term(tmp_path / "plain"), restyle_term(tmp_path / "restyle")
    assert plain > math.log(32) + 1.0 and trained < math.log(32) + 0.2, (plain, trained)


@pytest.mark.parametrize("weight", ["-1.0", "nan"])
def test_a_bad_restyle_weight_is_refused_in_one_line(tmp_path, capsys, weight):
    from lowres_vision.cli import main
    from tests.app.test_pretrain import TINY, _flags

    assert main(["pretrain", "--out", str(tmp_path / "bad"), *_flags({**TINY, "restyle_weight": weight})]) == 2
    assert capsys.readouterr().err.strip() == f"lowres-vision pretrain: error: restyle_weight must be >= 0, got {weight}"
