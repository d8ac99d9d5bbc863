"""The corpus's opt-in solids: one extruded shape as a lit block and as a three-view line drawing."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from scipy import ndimage

from lowres_vision.config import ConfigError
from lowres_vision.pretrain import (SCENE_KIND, SOLID_KIND, PretrainConfig, kind_shares, render_sample,
                                    render_second_view)
from lowres_vision.pretrain.solids import SOLID_SHAPES, VIEW_PHRASES, make_solid, render_block, render_drawing

_CAPTION = re.compile(rf"^an? ({'|'.join(SOLID_SHAPES)})-shaped (plate|block)(?: with (one|two|three|four) holes?)?$")
_COUNTS = {None: 0, "one": 1, "two": 2, "three": 3, "four": 4}


def _solids(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [make_solid(rng) for _ in range(count)]


def test_solids_take_their_share_and_their_second_rendering_is_the_other_view():
    shares = kind_shares(0.2, 0.3)
    assert shares[SOLID_KIND] == 0.3 and shares[SCENE_KIND] == 0.2 and sum(shares.values()) == pytest.approx(1.0)
    assert shares["objects"] == pytest.approx(0.5 * 0.30)
    samples = [render_sample(4, i, 28, 0.0, 0.3) for i in range(300)]
    solids = [i for i, s in enumerate(samples) if s.kind == SOLID_KIND]
    assert abs(len(solids) / 300 - 0.3) < 0.08  # binomial standard deviation 2.6 %
    orders = set()
    for i in solids:
        first, second = samples[i], render_second_view(4, i, 28, 0.0, 0.3)
        first_view, content = next((v, first.caption[len(p) + 1:]) for v, p in VIEW_PHRASES.items()
                                   if first.caption.startswith(p + " "))
        second_view = next(v for v, p in VIEW_PHRASES.items() if second.caption.startswith(p + " "))
        assert second_view != first_view and second.caption == f"{VIEW_PHRASES[second_view]} {content}"
        assert (first.style, second.style) == (first_view, second_view)
        assert _CAPTION.match(content), content
        assert second.kind == SOLID_KIND and second.image.size == (28, 28)
        assert np.array_equal(np.asarray(second.image), np.asarray(render_second_view(4, i, 28, 0.0, 0.3).image))
        orders.add((first_view, second_view))
    assert orders == {("render", "drawing"), ("drawing", "render")}
    assert all(render_second_view(4, i, 28, 0.0, 0.3) is None for i in range(300) if i not in solids)
    for scene_share, solid_share in ((0.5, 0.5), (-0.1, 0.2), (0.2, -0.1)):
        with pytest.raises(ValueError, match="scene_share and solid_share must be >= 0 with a sum below 1"):
            kind_shares(scene_share, solid_share)


def test_a_solids_caption_counts_its_holes_and_every_hole_lies_inside_the_footprint_apart_from_the_others():
    solids = _solids(300)
    counts = []
    for solid in solids:
        shape, noun, count = _CAPTION.match(solid.caption).groups()
        assert len(solid.holes) == _COUNTS[count]
        assert (noun == "block") == (solid.height > 0.15)
        footprint = PolygonPath(solid.outline)  # an independent point-in-polygon test
        for k, (x, y, radius) in enumerate(solid.holes):
            angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            rim = np.stack([x + (radius + 0.01) * np.cos(angles), y + (radius + 0.01) * np.sin(angles)], axis=1)
            assert footprint.contains_points(rim).all(), solid.caption
            assert all(np.hypot(x - ox, y - oy) > 2 * radius for ox, oy, _ in solid.holes[k + 1:])
        assert np.abs(solid.outline).max() <= 0.47 + 1e-9
        counts.append(len(solid.holes))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert {_CAPTION.match(s.caption).group(1) for s in solids} == set(SOLID_SHAPES)


def _pick(predicate):
    return next(s for s in _solids(200, seed=1) if predicate(s))


def test_a_renders_holes_are_openings_in_the_block_one_per_hole():
    for holes in (1, 3):
        solid = _pick(lambda s: len(s.holes) == holes)
        plain = dataclasses.replace(solid, holes=())
        with_holes = np.asarray(render_block(solid, np.random.default_rng(5), 224), dtype=np.int16)
        without = np.asarray(render_block(plain, np.random.default_rng(5), 224), dtype=np.int16)
        changed = np.abs(with_holes - without).max(axis=-1) > 20
        _, components = ndimage.label(ndimage.binary_opening(changed))
        assert components == holes
        hole_area = sum(np.pi * r * r for *_, r in solid.holes)
        assert 0 < changed.mean() < 3 * hole_area  # each opening is about its hole's size, foreshortened


def _ink(image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.int16)
    return np.abs(pixels - pixels[2, 2]).max(axis=-1) > 30  # anything unlike the sheet's corner


def test_a_thicker_solid_shows_taller_walls_in_the_render_and_taller_side_views_in_the_drawing():
    solid = _pick(lambda s: not s.holes and _CAPTION.match(s.caption).group(1) == "square")
    thin, thick = dataclasses.replace(solid, height=0.05), dataclasses.replace(solid, height=0.3)
    # The same viewpoint and light: the taller block covers more of the picture.
    assert _ink(render_block(thick, np.random.default_rng(3), 224)).sum() > 1.2 * _ink(render_block(thin, np.random.default_rng(3), 224)).sum()
    # A sheet without a border (the stream's first draw decides), so the ink is the three views alone.
    seed = next(k for k in range(50) if np.random.default_rng(k).random() >= 0.5)
    thin_ink, thick_ink = (_ink(render_drawing(s, np.random.default_rng(seed), 224)) for s in (thin, thick))
    thin_rows, thick_rows = (np.nonzero(ink.any(axis=1))[0] for ink in (thin_ink, thick_ink))
    thin_cols, thick_cols = (np.nonzero(ink.any(axis=0))[0] for ink in (thin_ink, thick_ink))
    # Top and front views stacked: the sheet's ink grows by the added height at the drawing's scale, which the
    # wider top-and-side row sets (224 px x 0.68-0.82 of the sheet, view gap 0.05-0.1); the width does not change.
    extent = solid.outline.max(0) - solid.outline.min(0)
    low, high = (224 * f / (extent.sum() + gap) for f, gap in ((0.68, 0.1), (0.82, 0.05)))
    grown = (thick_rows.max() - thick_rows.min()) - (thin_rows.max() - thin_rows.min())
    assert 0.25 * low - 2 <= grown <= 0.25 * high + 2
    assert abs((thick_cols.max() - thick_cols.min()) - (thin_cols.max() - thin_cols.min())) <= 1


def test_a_drawing_is_ink_on_paper_and_its_top_view_is_the_footprint():
    solid = _pick(lambda s: len(s.holes) == 0 and _CAPTION.match(s.caption).group(1) == "square")
    pixels = np.asarray(render_drawing(solid, np.random.default_rng(0), 224), dtype=np.float64).mean(-1)
    paper = np.median(pixels)
    assert paper > 230 and (pixels < paper - 60).mean() < 0.1  # a little ink on a light sheet
    for other in ("star", "circle"):
        different = _pick(lambda s: not s.holes and _CAPTION.match(s.caption).group(1) == other)
        assert not np.array_equal(pixels, np.asarray(render_drawing(different, np.random.default_rng(0), 224)).mean(-1))


def test_the_trainer_pairs_solids_and_refuses_shares_that_leave_no_corpus(tmp_path):
    PretrainConfig(out=str(tmp_path), solid_share=0.2, view_weight=1.0).validate()  # solids alone are enough to pair
    with pytest.raises(ConfigError, match="scene_share and solid_share must be >= 0 with a sum below 1"):
        PretrainConfig(out=str(tmp_path), scene_share=0.5, solid_share=0.5).validate()
    with pytest.raises(ConfigError, match="needs scenes or solids to pair"):
        PretrainConfig(out=str(tmp_path), view_weight=1.0).validate()
