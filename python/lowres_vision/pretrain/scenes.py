"""One generated scene, rendered in several ways: the corpus's pairs of "the same subject, drawn differently".

A web corpus shows one subject many ways: a photo, a sketch, a painted sign, a toy model of it. That is
what lets a foundation model match a drawing to a photograph, and a corpus of single renderings never
teaches it. A `Scene` is layout only (winding bands, an irregular pond or field, a few shapes), in
normalised coordinates, and `render_scene` draws it in one of `STYLES` under a small similarity
transform (a different framing, as between two pictures of one place):

- "sketch": ink outlines on paper, bands as pairs of lines, hatched regions;
- "photo": smooth noisy textures, bands and regions as filled colour, shaded shapes, a little blur;
- "model": the shapes as blocks raised off a tilted ground plane, lit from one side.

With `scene_share` > 0 the corpus holds scenes, captioned "a sketch of ...", "a photo of ..." or "a
model of ..." and the content; `view_weight` > 0 adds pretraining's image-to-image term between a scene's
rendering and another in a different style. Both are off for the shipped model. No scene holds a street
grid, a city block, a map symbol, a machine part, a dimension line or a circuit symbol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import pick, shape_polygon

STYLES = ("sketch", "photo", "model")
STYLE_PHRASES = {"sketch": "a sketch of", "photo": "a photo of", "model": "a model of"}
_SCENE_SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "star", "cross", "heart")
_COUNT_WORDS = ("one", "two", "three", "four", "five")
_PLACES = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class Scene:
    bands: tuple[np.ndarray, ...]  # polylines [k, 2], normalised
    band_widths: tuple[float, ...]
    region: np.ndarray | None  # polygon [k, 2], normalised: a pond or a field
    shapes: tuple[tuple[str, float, float, float, float], ...]  # (shape, cx, cy, radius, turn in degrees)
    caption: str  # what is drawn, whatever the style


def _band(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(4))
    ends = []
    for s in (side, (side + int(rng.integers(1, 4))) % 4):
        u = rng.uniform(0.1, 0.9)
        ends.append(np.array([[u, -0.1], [1.1, u], [u, 1.1], [-0.1, u]][s]))
    t = np.linspace(0, 1, 20)[:, None]
    direction = ends[1] - ends[0]
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
    bend = rng.uniform(-0.25, 0.25) * np.sin(math.pi * t) + rng.uniform(-0.05, 0.05) * np.sin(2 * math.pi * rng.uniform(1, 3) * t)
    return ends[0] + t * direction + bend * normal


def _blob(rng: np.random.Generator) -> np.ndarray:
    cx, cy, r = *rng.uniform(0.25, 0.75, 2), rng.uniform(0.12, 0.25)
    angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    wobble = 1 + 0.25 * np.sin(angles * int(rng.integers(2, 5)) + rng.uniform(0, 2 * math.pi))
    stretch = rng.uniform(0.7, 1.4)
    return np.stack([cx + r * wobble * np.cos(angles) * stretch, cy + r * wobble * np.sin(angles) / stretch], axis=1)


def _place(x: float, y: float) -> str:
    col, row = min(2, int(x * 3)), min(2, int(y * 3))
    place = _PLACES[row * 3 + col]
    return "in the centre" if place == "centre" else f"at the {place}"


def make_scene(rng: np.random.Generator) -> Scene:
    """A random layout of 0-2 bands, maybe a pond or field, and 1-4 shapes, with its caption."""
    band_count = int(rng.choice(3, p=[0.25, 0.5, 0.25]))
    bands = tuple(_band(rng) for _ in range(band_count))
    widths = tuple(float(rng.uniform(0.03, 0.07)) for _ in bands)
    region = _blob(rng) if rng.random() < 0.5 else None
    region_word = pick(rng, ("pond", "field")) if region is not None else None
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        shapes.append((_SCENE_SHAPES[int(rng.integers(len(_SCENE_SHAPES)))], float(rng.uniform(0.15, 0.85)),
                       float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.06, 0.12)), float(rng.uniform(0, 360))))
    parts = []
    if bands:
        parts.append("a winding path" if band_count == 1 else "two winding paths")
    if region is not None:
        parts.append(f"a {region_word} {_place(*region.mean(axis=0))}")
    kinds = sorted({s[0] for s in shapes})
    for kind in kinds:
        n = sum(1 for s in shapes if s[0] == kind)
        if n == 1:
            x, y = next((s[1], s[2]) for s in shapes if s[0] == kind)
            parts.append(f"a {kind} {_place(x, y)}")
        else:
            parts.append(f"{_COUNT_WORDS[n - 1]} {kind}es" if kind == "cross" else f"{_COUNT_WORDS[n - 1]} {kind}s")
    return Scene(bands, widths, region, tuple(shapes), ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1])


def _framing(rng: np.random.Generator, size: int):
    """A small similarity transform (turn up to 12 degrees, scale 0.85-1.15, shift up to 8 %) to pixels."""
    turn, scale = math.radians(rng.uniform(-12, 12)), rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.08, 0.08, 2)
    c, s = math.cos(turn) * scale, math.sin(turn) * scale

    def to_pixels(points: np.ndarray) -> list[tuple[float, float]]:
        centred = np.asarray(points, dtype=np.float64).reshape(-1, 2) - 0.5
        moved = np.stack([c * centred[:, 0] - s * centred[:, 1], s * centred[:, 0] + c * centred[:, 1]], axis=1) + 0.5 + shift
        return [tuple(p) for p in moved * size]

    return to_pixels, scale


def _shape_outline(shape: str, cx: float, cy: float, r: float, turn: float) -> np.ndarray:
    """Outline points of a shape in normalised coordinates, turned by `turn` degrees (hearts by a fifth of it,
    so they stay nearly upright); the corpus's own outlines, so a scene's star is the corpus's star."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 28, endpoint=False)
        local = np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    else:
        local = np.array(shape_polygon(shape, 0.0, 0.0, r, 0))
    a = math.radians(turn * (0.2 if shape == "heart" else 1.0))
    rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return local @ rotation + [cx, cy]


def _noise_texture(rng: np.random.Generator, size: int, base: np.ndarray, spread: float, cells: int) -> np.ndarray:
    """A smooth random colour field around `base` (float [size, size, 3])."""
    coarse = rng.normal(0, spread, (cells, cells, 1)) * np.ones(3) + rng.normal(0, spread * 0.3, (cells, cells, 3))
    field = Image.fromarray(np.clip(coarse * 2 + 128, 0, 255).astype(np.uint8), "RGB").resize((size, size), Image.Resampling.BICUBIC)
    grain = rng.normal(0, spread * 0.35, (size, size, 1))
    return np.clip(base + (np.asarray(field, np.float32) - 128) / 2 + grain, 0, 255)


def _mask(size: int, draw_fn) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(mask))
    return np.asarray(mask, np.float32)[..., None] / 255.0


def _sketch(scene: Scene, rng: np.random.Generator, size: int, to_pixels, scale: float) -> Image.Image:
    paper = np.array([(252, 250, 244), (245, 236, 214), (236, 242, 248), (250, 250, 250)][int(rng.integers(4))], np.float32)
    ink = tuple(int(c) for c in [(30, 30, 30), (70, 45, 25), (25, 40, 90)][int(rng.integers(3))])
    image = Image.fromarray(np.clip(paper + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, int(size * rng.uniform(0.006, 0.012)))
    if scene.region is not None:
        outline = to_pixels(scene.region)
        draw.polygon(outline, outline=ink, width=line)
        hatch = Image.new("L", (size, size), 0)
        hatch_draw = ImageDraw.Draw(hatch)
        step = size * rng.uniform(0.025, 0.045)
        for k in range(-size, 2 * size, max(2, int(step))):
            hatch_draw.line([(k, 0), (k + size, size)], fill=255, width=max(1, line // 2))
        inside = _mask(size, lambda d: d.polygon(outline, fill=255))
        pixels = np.asarray(image, np.float32)
        strokes = inside * np.asarray(hatch, np.float32)[..., None] / 255.0
        image = Image.fromarray((pixels * (1 - strokes) + np.array(ink, np.float32) * strokes).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
    for band, width in zip(scene.bands, scene.band_widths):
        points = np.asarray(band)
        tangent = np.gradient(points, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / (np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9)
        for side in (-0.5, 0.5):
            draw.line(to_pixels(points + side * width * normal), fill=ink, width=line, joint="curve")
    for shape, cx, cy, r, turn in scene.shapes:
        draw.polygon(to_pixels(_shape_outline(shape, cx, cy, r, turn)), outline=ink, width=line)
    return image


def _photo(scene: Scene, rng: np.random.Generator, size: int, to_pixels, scale: float) -> Image.Image:
    grounds = [(95, 140, 70), (170, 150, 110), (120, 120, 115), (200, 190, 160)]
    ground = np.array(grounds[int(rng.integers(len(grounds)))], np.float32)
    pixels = _noise_texture(rng, size, ground, 22, int(rng.integers(5, 12)))
    if scene.region is not None:
        fill = np.array([(40, 70, 120), (60, 110, 45), (150, 120, 60)][int(rng.integers(3))], np.float32)
        inside = _mask(size, lambda d: d.polygon(to_pixels(scene.region), fill=255))
        pixels = pixels * (1 - inside) + _noise_texture(rng, size, fill, 14, 8) * inside
    band_colour = np.array([(215, 210, 195), (90, 85, 80), (60, 90, 150)][int(rng.integers(3))], np.float32)
    for band, width in zip(scene.bands, scene.band_widths):
        on = _mask(size, lambda d: d.line(to_pixels(band), fill=255, width=max(2, int(width * size * scale)), joint="curve"))
        pixels = pixels * (1 - on) + (band_colour + rng.normal(0, 8, (size, size, 1))) * on
    for shape, cx, cy, r, turn in scene.shapes:
        colour = np.array([(200, 50, 40), (230, 180, 40), (240, 240, 235), (50, 70, 160), (150, 60, 140)][int(rng.integers(5))], np.float32)
        outline = to_pixels(_shape_outline(shape, cx, cy, r, turn))
        body = _mask(size, lambda d: d.polygon(outline, fill=255))
        shade = np.linspace(1.15, 0.8, size, dtype=np.float32)[:, None, None]
        pixels = pixels * (1 - body) + np.clip(colour * shade, 0, 255) * body
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2) * size / 224))


def _model(scene: Scene, rng: np.random.Generator, size: int, to_pixels, scale: float) -> Image.Image:
    # A tilted ground plane: the layout is squashed vertically, as seen from above at an angle.
    squash = rng.uniform(0.65, 0.85)

    def tilted(points: np.ndarray) -> list[tuple[float, float]]:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return to_pixels(np.stack([pts[:, 0], 0.5 + (pts[:, 1] - 0.5) * squash + 0.05], 1))

    top, bottom = np.array([235, 235, 238], np.float32), np.array([175, 178, 185], np.float32)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    image = Image.fromarray((top * (1 - ramp) + bottom * ramp + np.zeros((size, size, 3), np.float32)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if scene.region is not None:
        draw.polygon(tilted(scene.region), fill=(150, 165, 185))
    for band, width in zip(scene.bands, scene.band_widths):
        draw.line(tilted(band), fill=(205, 200, 190), width=max(2, int(width * size * scale * squash)), joint="curve")
    palette = [(185, 120, 60), (120, 125, 135), (200, 60, 50), (70, 110, 170), (210, 180, 60)]
    lift = size * rng.uniform(0.03, 0.06)
    light = rng.uniform(0.55, 0.75)
    for shape, cx, cy, r, turn in sorted(scene.shapes, key=lambda s: s[2]):  # far ones first
        colour = np.array(palette[int(rng.integers(len(palette)))], np.float32)
        outline = tilted(_shape_outline(shape, cx, cy, r, turn))
        side = tuple(int(c) for c in colour * light)
        for k in range(int(lift), 0, -1):  # the walls: the outline stacked upwards
            draw.polygon([(x, y - k) for x, y in outline], fill=side)
        draw.polygon([(x, y - lift) for x, y in outline], fill=tuple(int(c) for c in np.clip(colour * 1.1, 0, 255)),
                     outline=tuple(int(c) for c in colour * light * 0.8))
    return image


_RENDER = {"sketch": _sketch, "photo": _photo, "model": _model}


def render_scene(scene: Scene, style: str, rng: np.random.Generator, size: int) -> Image.Image:
    """`scene` drawn in `style` at `size` px, under a random framing drawn from `rng`."""
    to_pixels, scale = _framing(rng, size)
    return _RENDER[style](scene, rng, size, to_pixels, scale)

