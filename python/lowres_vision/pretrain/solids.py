"""Solids: one extruded shape shown as a shaded block and as an orthographic three-view line drawing.

A web corpus holds a few pictures of an object beside its drawing (a catalogue page, a maker's plan);
they are what could teach a foundation model that a line drawing and a lit solid are one thing, and
nothing else in the corpus pairs them. A `Solid` is one of the corpus's shapes as a footprint,
stretched, extruded to a plate or a block and pierced by up to four round holes. It is drawn either

- "render": seen from above at an angle (any side, 25-55 degrees up), walls and top lit from one
  side, holes open to the background, edges sometimes inked as CAD renders draw them; or
- "drawing": three orthographic views in ink on paper (top, front and side; the top view above
  the front view with the side view to its right, or below it with the side view to its left, as
  the two drawing conventions place them), holes as circles with centre lines in the top view and
  dashed hidden lines in the others.

Both are captioned with the same content ("a star-shaped plate with two holes") after their own
phrase, and the second rendering of a solid sample is the other one (`corpus.render_second_view`), the
positives of pretraining's image-to-image term. This is the corpus's third drawing-like kind. The
renderers are the corpus's own: the shapes are the corpus's shapes, and nothing here comes from the
synthetic benchmark's part generator (no L, T or hexagon outlines, no slots, steps, bosses,
dimensions or title blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import pick, shape_polygon

VIEWS = ("render", "drawing")
VIEW_PHRASES = {"render": "a render of", "drawing": "a three-view drawing of"}
SOLID_SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "star", "cross", "heart", "arrow")
_HOLE_WORDS = ("one hole", "two holes", "three holes", "four holes")
_FIT_GRID = 96  # raster of the footprint's [-0.5, 0.5]^2 square on which holes are fitted


@dataclass(frozen=True)
class Solid:
    outline: np.ndarray  # footprint polygon [k, 2] in [-0.5, 0.5]^2, counter-clockwise with y up
    height: float  # extrusion height, in the footprint's units
    holes: tuple[tuple[float, float, float], ...]  # through holes (x, y, radius)
    caption: str  # what is drawn, whatever the view


def _footprint(shape: str, rng: np.random.Generator) -> np.ndarray:
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.4
    else:
        # shape_polygon works in image coordinates (y down); flipping y keeps "pointing up" up.
        points = np.array(shape_polygon(shape, 0.0, 0.0, 0.36, int(rng.integers(4)))) * [1.0, -1.0]
    points = points * rng.uniform(0.75, 1.05, 2)  # stretched, as real parts are not all square
    points -= (points.max(0) + points.min(0)) / 2
    points /= max(1.0, np.abs(points).max() / 0.47)
    area = 0.5 * np.sum(points[:, 0] * np.roll(points[:, 1], -1) - np.roll(points[:, 0], -1) * points[:, 1])
    return points if area > 0 else points[::-1].copy()


def _fits(mask: np.ndarray, x: float, y: float, radius: float) -> bool:
    """Whether the disc of `radius` at (x, y) lies inside the rasterised footprint `mask`."""
    ring = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    xs = np.concatenate([[x], x + radius * np.cos(ring)])
    ys = np.concatenate([[y], y + radius * np.sin(ring)])
    cols = np.floor((xs + 0.5) * _FIT_GRID).astype(int)
    rows = np.floor((0.5 - ys) * _FIT_GRID).astype(int)
    if (cols < 0).any() or (rows < 0).any() or (cols >= _FIT_GRID).any() or (rows >= _FIT_GRID).any():
        return False
    return bool(mask[rows, cols].all())


def make_solid(rng: np.random.Generator) -> Solid:
    shape = pick(rng, SOLID_SHAPES)
    outline = _footprint(shape, rng)
    block = rng.random() < 0.5
    height = rng.uniform(0.18, 0.3) if block else rng.uniform(0.05, 0.1)
    mask_image = Image.new("L", (_FIT_GRID, _FIT_GRID), 0)
    ImageDraw.Draw(mask_image).polygon([((x + 0.5) * _FIT_GRID, (0.5 - y) * _FIT_GRID) for x, y in outline], fill=1)
    mask = np.asarray(mask_image, dtype=bool)
    wanted, holes = int(rng.integers(0, 5)), []
    radius = rng.uniform(0.03, 0.055)
    for _ in range(40 * wanted):  # rejection sampling: inside the footprint with a rim, apart from each other
        if len(holes) == wanted:
            break
        x, y = rng.uniform(-0.45, 0.45, 2)
        if _fits(mask, x, y, radius + 0.035) and all(math.hypot(x - hx, y - hy) > 2 * radius + 0.04 for hx, hy, _ in holes):
            holes.append((float(x), float(y), float(radius)))
    noun = "block" if block else "plate"
    content = f"{'an' if shape[0] in 'aeiou' else 'a'} {shape}-shaped {noun}" + (f" with {_HOLE_WORDS[len(holes) - 1]}" if holes else "")
    return Solid(outline, float(height), tuple(holes), content)


def _circle(x: float, y: float, radius: float, points: int = 32) -> np.ndarray:
    angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return np.stack([x + radius * np.cos(angles), y + radius * np.sin(angles)], axis=1)


def _mask(size: int, polygon: list[tuple[float, float]]) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).polygon(polygon, fill=255)
    return np.asarray(image, dtype=bool)


def render_block(solid: Solid, rng: np.random.Generator, size: int) -> Image.Image:
    """The solid seen from above at an angle, lit from one side (painter's algorithm: walls far to near,
    then the top, which nothing of a prism seen from above can hide)."""
    azimuth, elevation = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(25, 55))
    ca, sa, ce, se = math.cos(azimuth), math.sin(azimuth), math.cos(elevation), math.sin(elevation)
    scale = size * rng.uniform(0.7, 0.9)
    centre = size / 2 + rng.uniform(-0.05, 0.05, 2) * size

    def turned(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return points[:, 0] * ca - points[:, 1] * sa, points[:, 0] * sa + points[:, 1] * ca

    def project(points: np.ndarray, z: float) -> list[tuple[float, float]]:
        across, away = turned(points)  # "away" grows from the viewer
        up = away * se + z * ce
        return list(zip(centre[0] + across * scale, centre[1] + (solid.height * ce / 2 - up) * scale))

    paper = np.array([rng.uniform(215, 250)] * 3) + rng.uniform(-12, 12, 3)
    ramp = np.linspace(1.0, rng.uniform(0.82, 0.95), size)[:, None, None]
    pixels = np.clip(paper * ramp * np.ones((size, size, 1)), 0, 255)
    body = np.array([[170, 175, 185], [95, 125, 175], [205, 145, 65], [125, 130, 120], [190, 70, 55],
                     [80, 150, 95], [225, 215, 195]][int(rng.integers(7))], dtype=np.float64)
    light_turn = rng.uniform(-math.pi, math.pi)
    light = np.array([math.cos(light_turn) * 0.6, math.sin(light_turn) * 0.6, 0.75])

    def shade(normal_xy: np.ndarray, normal_z: float) -> tuple[int, ...]:
        lambert = max(0.0, float(normal_xy @ light[:2] + normal_z * light[2]) / np.linalg.norm(light))
        return tuple(int(c) for c in np.clip(body * (0.35 + 0.75 * lambert), 0, 255))

    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    inked = rng.random() < 0.5
    edge = tuple(int(c) for c in body * 0.3) if inked else None
    width = max(1, round(size / 160))
    outline, walls = solid.outline, []
    for start, end in zip(outline, np.roll(outline, -1, axis=0)):
        direction = end - start
        normal = np.array([direction[1], -direction[0]]) / (np.linalg.norm(direction) + 1e-12)  # outward (CCW outline)
        _, normal_away = turned(normal[None])
        if normal_away[0] < 0:  # faces the viewer
            _, middle_away = turned(((start + end) / 2)[None])
            quad = np.stack([start, end])
            walls.append((middle_away[0], project(quad, 0.0)[::-1] + project(quad, solid.height), normal))
    for _, polygon, normal in sorted(walls, key=lambda wall: -wall[0]):
        draw.polygon(polygon, fill=shade(normal, 0.0), outline=edge, width=width)
    draw.polygon(project(outline, solid.height), fill=shade(np.zeros(2), 1.0), outline=edge, width=width)
    if solid.holes:
        # A hole: its top rim filled with the shadowed inner wall, and where the top and bottom rims
        # overlap on screen, the ground seen through it.
        result = np.asarray(image, dtype=np.float64).copy()
        inner = np.array(shade(np.zeros(2), 0.0), dtype=np.float64) * 0.6
        for x, y, radius in solid.holes:
            rim = _circle(x, y, radius)
            top, bottom = _mask(size, project(rim, solid.height)), _mask(size, project(rim, 0.0))
            result[top] = inner
            result[top & bottom] = paper * 0.85
        image = Image.fromarray(np.clip(result, 0, 255).astype(np.uint8), "RGB")
        if inked:
            draw = ImageDraw.Draw(image)
            for x, y, radius in solid.holes:
                draw.polygon(project(_circle(x, y, radius), solid.height), outline=edge, width=width)
    return image


def _dashed(draw: ImageDraw.ImageDraw, x: float, top: float, bottom: float, ink, width: int, dash: float) -> None:
    """A vertical dashed line (a hidden edge)."""
    y = top
    while y < bottom:
        draw.line([(x, y), (x, min(y + dash, bottom))], fill=ink, width=width)
        y += 1.8 * dash


def render_drawing(solid: Solid, rng: np.random.Generator, size: int) -> Image.Image:
    """Top, front and side views of the solid in ink on paper, in one of the two conventional arrangements;
    half of the sheets get a border (the stream's first draw)."""
    bordered = rng.random() < 0.5
    paper = tuple(int(c) for c in np.clip(rng.uniform(238, 255) + rng.uniform(-6, 6, 3), 0, 255))
    ink = tuple(int(c) for c in np.full(3, rng.uniform(10, 70)))
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    width = max(1, round(size / rng.uniform(90, 150)))
    thin = max(1, width // 2)
    lo, hi = solid.outline.min(0), solid.outline.max(0)
    extent_x, extent_y, height = hi[0] - lo[0], hi[1] - lo[1], solid.height
    gap = rng.uniform(0.05, 0.1)
    span_x, span_y = extent_x + gap + extent_y, extent_y + gap + height  # top + side views across, top + front views down
    scale = size * rng.uniform(0.68, 0.82) / max(span_x, span_y)
    origin = (size - np.array([span_x, span_y]) * scale) / 2 + rng.uniform(-0.04, 0.04, 2) * size
    third_angle = rng.random() < 0.5  # top view above the front view, side view on the right; else mirrored
    front_left = origin[0] + (0 if third_angle else extent_y + gap) * scale
    side_left = origin[0] + ((extent_x + gap) if third_angle else 0) * scale
    top_top = origin[1] + (0 if third_angle else height + gap) * scale
    front_top = origin[1] + ((extent_y + gap) if third_angle else 0) * scale

    def top_view(points: np.ndarray) -> list[tuple[float, float]]:
        return [(front_left + (x - lo[0]) * scale, top_top + (hi[1] - y) * scale) for x, y in points]

    draw.polygon(top_view(solid.outline), outline=ink, width=width)
    front_bottom = front_top + height * scale
    draw.rectangle([front_left, front_top, front_left + extent_x * scale, front_bottom], outline=ink, width=width)
    draw.rectangle([side_left, front_top, side_left + extent_y * scale, front_bottom], outline=ink, width=width)
    # A prism's vertical edges: a line in the front and side views at every corner of the footprint.
    corners = solid.outline if len(solid.outline) < 40 else np.zeros((0, 2))
    for x, y in corners:
        draw.line([(front_left + (x - lo[0]) * scale, front_top), (front_left + (x - lo[0]) * scale, front_bottom)], fill=ink, width=thin)
        side_x = side_left + ((y - lo[1]) if third_angle else (hi[1] - y)) * scale
        draw.line([(side_x, front_top), (side_x, front_bottom)], fill=ink, width=thin)
    dash = max(2.0, size / 60)
    for x, y, radius in solid.holes:
        draw.polygon(top_view(_circle(x, y, radius)), outline=ink, width=thin)
        (cx, cy), reach = top_view(np.array([[x, y]]))[0], (radius * 1.5) * scale
        draw.line([(cx - reach, cy), (cx + reach, cy)], fill=ink, width=thin)
        draw.line([(cx, cy - reach), (cx, cy + reach)], fill=ink, width=thin)
        for edge in (-radius, radius):  # the hole's walls, hidden behind the front and side faces
            _dashed(draw, front_left + (x + edge - lo[0]) * scale, front_top, front_bottom, ink, thin, dash)
            along = (y + edge - lo[1]) if third_angle else (hi[1] - y - edge)
            _dashed(draw, side_left + along * scale, front_top, front_bottom, ink, thin, dash)
    if bordered:
        inset = size * rng.uniform(0.02, 0.05)
        draw.rectangle([inset, inset, size - inset, size - inset], outline=ink, width=thin)
    return image


def render_solid(solid: Solid, view: str, rng: np.random.Generator, size: int) -> Image.Image:
    """`solid` in `view` ("render" or "drawing") at `size` px."""
    return (render_block if view == "render" else render_drawing)(solid, rng, size)
