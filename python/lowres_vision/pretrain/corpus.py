"""A procedurally generated, captioned general image corpus: the "web" the shipped CLIP learns from.

Sample `i` of a corpus with seed `s` is drawn from `numpy.random.default_rng([s, i])` alone, so a
corpus is a pure function of (seed, index): any worker can render any sample, and a resumed run
sees exactly the images an uninterrupted one would. Every sample is an image and an English
caption from a small grammar naming what was drawn: shapes with their colour, size and position,
counts, letters and digits, icons, textures, landscapes, and, as a small share, line drawings of
shapes and node-and-line diagrams (`DRAWING_LIKE_KINDS`), the little diagram-like data a web
corpus holds. Nothing is taken from the synthetic LITE generators (no circuit symbols, city
layouts or machine parts, none of their class names).

Opt-in, off for the shipped model: a share of scenes (`scene_share`, `scenes.py`), each drawn as a
sketch, a photo or a model, and a share of solids (`solid_share`, `solids.py`), each drawn as a lit
block or as a three-view line drawing. Both have a second rendering, the scene in another style and
the solid in its other view (`render_second_view`): the positives of pretraining's image-to-image term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scenes import STYLE_PHRASES, STYLES, make_scene, render_scene
from .shapes import pick, shape_polygon
from .solids import VIEW_PHRASES, VIEWS, make_solid, render_solid

_SUPERSAMPLE = 2  # drawn at 2x and downsampled, for anti-aliased edges

COLOURS = {
    "red": (205, 35, 35), "orange": (240, 140, 20), "yellow": (240, 215, 30), "green": (40, 160, 60),
    "blue": (35, 80, 210), "purple": (130, 50, 170), "pink": (240, 130, 180), "brown": (120, 75, 35),
    "black": (20, 20, 20), "grey": (130, 130, 130), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "star", "cross", "ring", "heart", "arrow")
ORIENTED_SHAPES = ("triangle", "arrow")  # the caption says where they point
DIRECTIONS = ("up", "right", "down", "left")
SIZES = {"small": (0.07, 0.10), "large": (0.14, 0.19)}  # radius as a fraction of the image side
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
ICONS = ("house", "tree", "sun", "moon", "cloud", "flower", "fish", "boat")
PATTERNS = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "polka dots", "wavy lines")
NUMBERS = ("one", "two", "three", "four", "five", "six")
GLYPHS = tuple("ABCDEFGHJKLMNPQRSTUVWXYZ") + tuple("0123456789")

# Kinds of sample and their shares of the corpus. "line drawing" (outlines of shapes in black on
# white) and "diagram" (nodes joined by lines) are the drawing- and diagram-like share.
KIND_WEIGHTS = {
    "objects": 0.30, "count": 0.14, "glyph": 0.14, "icon": 0.14, "texture": 0.10, "landscape": 0.10,
    "line drawing": 0.05, "diagram": 0.03,
}
DRAWING_LIKE_KINDS = ("line drawing", "diagram")
# Opt-in (`scene_share` > 0): scenes drawn as a sketch, a photo or a model (`scenes`), each with a second
# rendering in another style for pretraining's image-to-image term. At scene_share 0 the corpus is the
# one above, sample for sample.
SCENE_KIND = "scene"
# Opt-in (`solid_share` > 0): solids (`solids`), drawing-like too, each with its other view as a second rendering.
SOLID_KIND = "solid"
_SECOND_VIEW_STREAM = 1


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    kind: str
    subject: str | None  # the one thing drawn, for zero-shot classification ("a star", "a house", ...); None if several
    style: str | None = None  # how a scene or solid is drawn ("sketch", "drawing", ...); None for the other kinds


def article(phrase: str) -> str:
    """'a' or 'an' before `phrase`."""
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def subject_prompts() -> tuple[str, ...]:
    """Every `Sample.subject`: the class prompts of zero-shot classification on the corpus."""
    return (tuple(article(s) for s in SHAPES + ICONS) + PATTERNS
            + tuple(_glyph_subject(g) for g in GLYPHS))


def _glyph_subject(glyph: str) -> str:
    return f"the digit {glyph}" if glyph.isdigit() else f"the letter {glyph}"


def _colour(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> tuple[str, tuple[int, int, int]]:
    names = [n for n in COLOURS if n not in exclude]
    name = names[int(rng.integers(len(names)))]
    jitter = rng.integers(-18, 19, 3)
    return name, tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[name], jitter))


def _background(rng: np.random.Generator, size: int, avoid: tuple[str, ...]) -> tuple[Image.Image, str]:
    """A plain light background, or a soft vertical gradient; never a colour the caption names."""
    names = [n for n in ("white", "grey", "yellow", "pink") if n not in avoid]
    name = pick(rng, names)
    base = np.array(COLOURS[name], dtype=np.float32) * 0.35 + 255 * 0.65 if name != "white" else np.full(3, 250.0)
    if rng.random() < 0.5:
        shade = np.linspace(-15, 15, size, dtype=np.float32)[:, None, None] * rng.choice([-1, 1])
        pixels = np.clip(base[None, None, :] + shade, 0, 255) * np.ones((size, size, 1), np.float32)
    else:
        pixels = np.broadcast_to(base, (size, size, 3))
    return Image.fromarray(pixels.astype(np.uint8), "RGB"), name


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, ink, *,
               direction: int = 0, outline_width: int = 0) -> None:
    """A filled shape, or its outline when `outline_width` > 0."""
    fill = None if outline_width else ink
    width = outline_width or 1
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=None if shape == "ring" else fill, outline=ink,
                     width=max(width, int(r * 0.35)) if shape == "ring" else width)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, direction), fill=fill, outline=ink, width=width)


def _shape_phrase(shape: str, direction: int) -> str:
    return f"{shape} pointing {DIRECTIONS[direction]}" if shape in ORIENTED_SHAPES else shape


def _cell_centre(rng: np.random.Generator, cell: int, size: float) -> tuple[float, float]:
    row, col = divmod(cell, 3)
    return ((col + 0.5 + rng.uniform(-0.12, 0.12)) * size / 3, (row + 0.5 + rng.uniform(-0.12, 0.12)) * size / 3)


def _objects(rng, size):
    count = int(rng.integers(1, 4))
    cells = sorted(rng.choice(9, count, replace=False).tolist())
    items = []
    for cell in cells:
        shape, direction = pick(rng, SHAPES), int(rng.integers(4))
        size_name = pick(rng, tuple(SIZES))
        items.append((cell, shape, direction, size_name, _colour(rng, exclude=("white",))))
    image, _ = _background(rng, size, avoid=tuple(c[0] for *_, c in items))
    draw = ImageDraw.Draw(image)
    phrases = []
    for cell, shape, direction, size_name, (colour, ink) in items:
        cx, cy = _cell_centre(rng, cell, size)
        low, high = SIZES[size_name]
        draw_shape(draw, shape, cx, cy, rng.uniform(low, high) * size, ink, direction=direction)
        where = "in the centre" if POSITIONS[cell] == "centre" else f"at the {POSITIONS[cell]}"
        phrases.append(f"a {size_name} {colour} {_shape_phrase(shape, direction)} {where}")
    subject = article(items[0][1]) if count == 1 else None
    return image, " and ".join(phrases), subject


def _count(rng, size):
    count = int(rng.integers(1, len(NUMBERS) + 1))
    shape = pick(rng, tuple(s for s in SHAPES if s not in ORIENTED_SHAPES))
    colour, ink = _colour(rng, exclude=("white",))
    image, _ = _background(rng, size, avoid=(colour,))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.05, 0.075)
    centres: list[tuple[float, float]] = []
    while len(centres) < count:  # rejection sampling: no two shapes touch
        c = tuple(rng.uniform(r * 1.3, size - r * 1.3, 2))
        if all(math.dist(c, o) > 2.4 * r for o in centres):
            centres.append(c)
    for cx, cy in centres:
        draw_shape(draw, shape, cx, cy, r, ink)
    noun = shape if count == 1 else plural(shape)
    return image, f"{NUMBERS[count - 1]} {colour} {noun}", article(shape) if count == 1 else None


def _glyph(rng, size):
    glyph = pick(rng, GLYPHS)
    colour, ink = _colour(rng, exclude=("white",))
    image, background = _background(rng, size, avoid=(colour,))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(size * rng.uniform(0.3, 0.6)))
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    draw.text((cx, cy), glyph, fill=ink, font=font, anchor="mm", stroke_width=int(rng.integers(0, 3)), stroke_fill=ink)
    subject = _glyph_subject(glyph)
    return image, f"{subject} in {colour} on a {background} background", subject


def _icon(rng, size):
    icon = pick(rng, ICONS)
    image, _ = _background(rng, size, avoid=())
    draw = ImageDraw.Draw(image)
    s = size * rng.uniform(0.28, 0.4)
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    colour, ink = _colour(rng, exclude=("white", "grey"))
    if icon == "house":
        draw.rectangle([cx - s * 0.6, cy - s * 0.1, cx + s * 0.6, cy + s * 0.8], fill=ink)
        draw.polygon([(cx - s * 0.8, cy - s * 0.1), (cx, cy - s * 0.8), (cx + s * 0.8, cy - s * 0.1)], fill=COLOURS["brown"])
        draw.rectangle([cx - s * 0.15, cy + s * 0.35, cx + s * 0.15, cy + s * 0.8], fill=COLOURS["black"])
    elif icon == "tree":
        draw.rectangle([cx - s * 0.12, cy + s * 0.1, cx + s * 0.12, cy + s * 0.85], fill=COLOURS["brown"])
        draw.ellipse([cx - s * 0.6, cy - s * 0.8, cx + s * 0.6, cy + s * 0.3], fill=ink)
    elif icon == "sun":
        for k in range(12):
            a = math.radians(30 * k)
            draw.line([(cx + s * 0.55 * math.cos(a), cy + s * 0.55 * math.sin(a)),
                       (cx + s * 0.85 * math.cos(a), cy + s * 0.85 * math.sin(a))], fill=ink, width=max(2, int(s * 0.08)))
        draw.ellipse([cx - s * 0.45, cy - s * 0.45, cx + s * 0.45, cy + s * 0.45], fill=ink)
    elif icon == "moon":
        draw.ellipse([cx - s * 0.7, cy - s * 0.7, cx + s * 0.7, cy + s * 0.7], fill=ink)
        draw.ellipse([cx - s * 0.35, cy - s * 0.85, cx + s * 0.95, cy + s * 0.45], fill=image.getpixel((2, int(cy))))
    elif icon == "cloud":
        for dx, dy, rr in ((-0.45, 0.1, 0.4), (0.0, -0.15, 0.5), (0.45, 0.1, 0.4), (0.0, 0.2, 0.4)):
            draw.ellipse([cx + s * (dx - rr), cy + s * (dy - rr), cx + s * (dx + rr), cy + s * (dy + rr)], fill=ink)
    elif icon == "flower":
        draw.line([(cx, cy), (cx, cy + s)], fill=COLOURS["green"], width=max(2, int(s * 0.08)))
        for k in range(6):
            a = math.radians(60 * k)
            px, py = cx + s * 0.35 * math.cos(a), cy + s * 0.35 * math.sin(a)
            draw.ellipse([px - s * 0.22, py - s * 0.22, px + s * 0.22, py + s * 0.22], fill=ink)
        draw.ellipse([cx - s * 0.18, cy - s * 0.18, cx + s * 0.18, cy + s * 0.18], fill=COLOURS["yellow"])
    elif icon == "fish":
        draw.ellipse([cx - s * 0.7, cy - s * 0.35, cx + s * 0.4, cy + s * 0.35], fill=ink)
        draw.polygon([(cx + s * 0.3, cy), (cx + s * 0.8, cy - s * 0.35), (cx + s * 0.8, cy + s * 0.35)], fill=ink)
        draw.ellipse([cx - s * 0.5, cy - s * 0.12, cx - s * 0.35, cy + s * 0.03], fill=COLOURS["black"])
    else:  # boat
        draw.polygon([(cx - s * 0.8, cy + s * 0.3), (cx + s * 0.8, cy + s * 0.3), (cx + s * 0.5, cy + s * 0.7), (cx - s * 0.5, cy + s * 0.7)], fill=ink)
        draw.line([(cx, cy + s * 0.3), (cx, cy - s * 0.8)], fill=COLOURS["black"], width=max(2, int(s * 0.06)))
        draw.polygon([(cx + s * 0.05, cy - s * 0.75), (cx + s * 0.6, cy + s * 0.2), (cx + s * 0.05, cy + s * 0.2)], fill=COLOURS["white"], outline=COLOURS["black"])
    return image, article(f"{colour} {icon}"), article(icon)


def _texture(rng, size):
    pattern = pick(rng, PATTERNS)
    (first, ink), (second, paper) = _colour(rng), _colour(rng)
    while second == first:
        second, paper = _colour(rng)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / rng.uniform(4, 10)
    phase = rng.uniform(0, period)
    if pattern == "horizontal stripes":
        mask = ((y + phase) % period) < period / 2
    elif pattern == "vertical stripes":
        mask = ((x + phase) % period) < period / 2
    elif pattern == "diagonal stripes":
        mask = ((x + y * rng.choice([-1, 1]) + phase) % period) < period / 2
    elif pattern == "checkerboard":
        mask = (((x + phase) // period + (y + phase) // period) % 2) == 0
    elif pattern == "polka dots":
        cx, cy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        mask = cx * cx + cy * cy < (period * 0.28) ** 2
    else:  # wavy lines
        mask = ((y + period * 0.3 * np.sin(2 * math.pi * x / (period * 2)) + phase) % period) < period / 3
    pixels = np.where(mask[..., None], np.array(ink, np.float32), np.array(paper, np.float32))
    return Image.fromarray(pixels.astype(np.uint8), "RGB"), f"{first} and {second} {pattern}", pattern


def _landscape(rng, size):
    time = pick(rng, ("day", "sunset", "night"))
    ground = pick(rng, ("grass", "sand", "snow", "water"))
    sky = {"day": (110, 170, 235), "sunset": (240, 150, 80), "night": (20, 25, 60)}[time]
    floor = {"grass": (70, 150, 60), "sand": (220, 195, 130), "snow": (240, 240, 245), "water": (40, 90, 170)}[ground]
    horizon = size * rng.uniform(0.5, 0.7)
    image = Image.new("RGB", (size, size), sky)
    draw = ImageDraw.Draw(image)
    parts = []
    if rng.random() < 0.4:
        peak = rng.uniform(0.3, 0.7) * size
        draw.polygon([(peak - size * 0.35, horizon), (peak, horizon - size * rng.uniform(0.2, 0.35)), (peak + size * 0.35, horizon)], fill=(110, 110, 120))
        parts.append("a mountain")
    draw.rectangle([0, horizon, size, size], fill=floor)
    light = "a moon" if time == "night" else "a sun"
    if rng.random() < 0.7:
        lx, ly, lr = rng.uniform(0.15, 0.85) * size, rng.uniform(0.1, 0.25) * size, size * 0.06
        draw.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=(245, 240, 200) if time == "night" else (250, 220, 40))
        parts.append(light)
    trees = int(rng.integers(0, 4)) if ground != "water" else 0
    for _ in range(trees):
        tx, th = rng.uniform(0.1, 0.9) * size, size * rng.uniform(0.12, 0.2)
        base = horizon + rng.uniform(0.05, 0.2) * size
        draw.rectangle([tx - th * 0.08, base - th * 0.5, tx + th * 0.08, base], fill=COLOURS["brown"])
        draw.polygon([(tx - th * 0.35, base - th * 0.4), (tx, base - th * 1.2), (tx + th * 0.35, base - th * 0.4)], fill=(30, 100, 40))
    if trees:
        parts.append("a tree" if trees == 1 else f"{NUMBERS[trees - 1]} trees")
    if ground != "water" and rng.random() < 0.4:
        hx, hs = rng.uniform(0.2, 0.8) * size, size * 0.1
        base = horizon + size * 0.12
        draw.rectangle([hx - hs, base - hs, hx + hs, base], fill=(200, 60, 50))
        draw.polygon([(hx - hs * 1.2, base - hs), (hx, base - hs * 1.8), (hx + hs * 1.2, base - hs)], fill=(90, 50, 30))
        parts.append("a house")
    on = {"grass": "on grass", "sand": "on sand", "snow": "in snow", "water": "by the sea"}[ground]
    caption = f"a {time} landscape {on}" + (" with " + " and ".join(parts) if parts else "")
    return image, caption, None


def _line_drawing(rng, size):
    shape, direction = pick(rng, SHAPES), int(rng.integers(4))
    image = Image.new("RGB", (size, size), COLOURS["white"])
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    draw_shape(draw, shape, cx, cy, size * rng.uniform(0.2, 0.32), COLOURS["black"], direction=direction,
               outline_width=max(2, int(size * 0.012)))
    return image, f"a line drawing of {article(_shape_phrase(shape, direction))}", article(shape)


def _diagram(rng, size):
    count = int(rng.integers(3, len(NUMBERS) + 1))
    image = Image.new("RGB", (size, size), COLOURS["white"])
    draw = ImageDraw.Draw(image)
    nodes = rng.uniform(0.15, 0.85, (count, 2)) * size
    for a in range(1, count):  # a random tree: every node joins an earlier one
        b = int(rng.integers(a))
        draw.line([tuple(nodes[a]), tuple(nodes[b])], fill=COLOURS["black"], width=max(2, int(size * 0.01)))
    r = size * 0.035
    for x, y in nodes:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS["white"], outline=COLOURS["black"], width=max(2, int(size * 0.01)))
    return image, f"a diagram of {NUMBERS[count - 1]} nodes joined by lines", None


_RENDERERS = {
    "objects": _objects, "count": _count, "glyph": _glyph, "icon": _icon, "texture": _texture,
    "landscape": _landscape, "line drawing": _line_drawing, "diagram": _diagram,
}


def kind_shares(scene_share: float = 0.0, solid_share: float = 0.0) -> dict[str, float]:
    """Each kind's share of the corpus: `KIND_WEIGHTS` scaled to what the opt-in scenes and solids leave."""
    if not (scene_share >= 0 and solid_share >= 0 and scene_share + solid_share < 1):
        raise ValueError(f"scene_share and solid_share must be >= 0 with a sum below 1, "
                         f"got scene_share={scene_share}, solid_share={solid_share}")
    total = sum(KIND_WEIGHTS.values())
    shares = {kind: weight / total * (1.0 - scene_share - solid_share) for kind, weight in KIND_WEIGHTS.items()}
    if scene_share > 0:
        shares[SCENE_KIND] = scene_share
    if solid_share > 0:
        shares[SOLID_KIND] = solid_share
    return shares


def _draw_kind(rng: np.random.Generator, scene_share: float, solid_share: float) -> str:
    shares = kind_shares(scene_share, solid_share)
    kinds = tuple(shares)
    return kinds[int(rng.choice(len(kinds), p=np.array([shares[k] for k in kinds])))]


@dataclass(frozen=True)
class _PairedKind:
    """A kind drawn in one of several styles, whose second rendering is the same content in another style."""

    make: Callable  # rng -> content with a `.caption`
    styles: tuple[str, ...]
    phrases: dict[str, str]  # style -> the caption's opening words
    render: Callable  # (content, style, rng, size) -> PIL image


_PAIRED = {SCENE_KIND: _PairedKind(make_scene, STYLES, STYLE_PHRASES, render_scene),
           SOLID_KIND: _PairedKind(make_solid, VIEWS, VIEW_PHRASES, render_solid)}
PAIRED_KINDS = tuple(_PAIRED)


def render_sample(seed: int, index: int, image_size: int, scene_share: float = 0.0, solid_share: float = 0.0) -> Sample:
    """Sample `index` of the corpus with `seed`, as an `image_size` RGB image and its caption."""
    rng = np.random.default_rng([seed, index])
    kind = _draw_kind(rng, scene_share, solid_share)
    size = image_size * _SUPERSAMPLE
    style = None
    if kind in _PAIRED:
        paired = _PAIRED[kind]
        content, style = paired.make(rng), pick(rng, paired.styles)
        image, caption, subject = paired.render(content, style, rng, size), f"{paired.phrases[style]} {content.caption}", None
    else:
        image, caption, subject = _RENDERERS[kind](rng, size)
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return Sample(image=image, caption=caption, kind=kind, subject=subject, style=style)


def render_second_view(seed: int, index: int, image_size: int, scene_share: float, solid_share: float = 0.0) -> Sample | None:
    """For a scene, the same scene drawn in another style under another framing; for a solid, its other view
    (a drawing for a render, a render for a drawing); both from a random stream of their own and captioned
    like the first. None for the other kinds."""
    rng = np.random.default_rng([seed, index])
    kind = _draw_kind(rng, scene_share, solid_share)
    if kind not in _PAIRED:
        return None
    paired = _PAIRED[kind]
    content, first_style = paired.make(rng), pick(rng, paired.styles)  # the draws render_sample makes: the same content
    view_rng = np.random.default_rng([seed, index, _SECOND_VIEW_STREAM])
    style = pick(view_rng, tuple(s for s in paired.styles if s != first_style))
    image = paired.render(content, style, view_rng, image_size * _SUPERSAMPLE)
    return Sample(image=image.resize((image_size, image_size), Image.Resampling.BOX),
                  caption=f"{paired.phrases[style]} {content.caption}", kind=kind, subject=None, style=style)
