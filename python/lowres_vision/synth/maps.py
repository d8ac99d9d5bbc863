"""Procedural cities rendered as a "satellite" photo and as old maps in several cartographic styles.

A layout (river, coast, main roads, street-grid districts, blocks, parks) lives in normalised
coordinates. The satellite rendering is textured and photographic; each old map draws the same
layout in one of four styles under a small similarity transform, with some streets missing
(not yet built) and some present only on the map (since demolished) - the changes the paper
describes between historic maps and today's satellite images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGE_SIZE = 224
NUM_MAP_STYLES = 4


@dataclass
class Road:
    points: np.ndarray  # [k, 2] normalised
    width: float  # normalised
    major: bool
    on_map: bool = True
    on_satellite: bool = True


@dataclass
class CityLayout:
    roads: list[Road] = field(default_factory=list)
    river: np.ndarray | None = None  # polyline [k, 2]
    river_width: float = 0.0
    sea: np.ndarray | None = None  # polygon [k, 2]
    blocks: list[np.ndarray] = field(default_factory=list)  # quadrilaterals [4, 2]
    parks: list[int] = field(default_factory=list)  # indices into blocks
    districts: list[tuple[float, float, float]] = field(default_factory=list)  # (cx, cy, radius)


def _wiggly_line(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, amplitude: float, count: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, count)[:, None]
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
    phase, freq = rng.uniform(0, 2 * math.pi, 2), rng.uniform(0.5, 2.0, 2)
    offset = amplitude * (np.sin(2 * math.pi * freq[0] * t + phase[0]) + 0.5 * np.sin(2 * math.pi * freq[1] * t * 2 + phase[1]))
    return start + t * direction + offset * normal


def _edge_point(rng: np.random.Generator, side: int) -> np.ndarray:
    u = rng.uniform(0.1, 0.9)
    return np.array([[u, -0.15], [1.15, u], [u, 1.15], [-0.15, u]][side])


def _water_mask(layout: CityLayout, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if layout.sea is not None:
        draw.polygon([tuple(p) for p in layout.sea * size], fill=255)
    if layout.river is not None:
        draw.line([tuple(p) for p in layout.river * size], fill=255, width=max(1, int(layout.river_width * size)), joint="curve")
    return np.asarray(mask) > 0


def make_layout(rng: np.random.Generator) -> CityLayout:
    layout = CityLayout()
    if rng.random() < 0.35:
        # A wiggly shore parallel to the top edge at depth d, then turned to a random side.
        depth = rng.uniform(0.12, 0.35)
        shore = _wiggly_line(rng, np.array([-0.2, depth]), np.array([1.2, depth]), 0.05)
        sea = np.concatenate([shore, [[1.2, -0.2], [-0.2, -0.2]]])
        for _ in range(int(rng.integers(4))):
            sea = np.stack([1.0 - sea[:, 1], sea[:, 0]], axis=1)  # quarter turn about the centre
        layout.sea = sea
    if rng.random() < 0.8:
        side = int(rng.integers(4))
        layout.river = _wiggly_line(rng, _edge_point(rng, side), _edge_point(rng, (side + 2) % 4), rng.uniform(0.03, 0.1))
        layout.river_width = rng.uniform(0.03, 0.07)
    for _ in range(int(rng.integers(2, 5))):
        side = int(rng.integers(4))
        other = (side + int(rng.integers(1, 4))) % 4
        layout.roads.append(Road(_wiggly_line(rng, _edge_point(rng, side), _edge_point(rng, other), rng.uniform(0.0, 0.05)),
                                 rng.uniform(0.018, 0.028), major=True))
    water = _water_mask(layout, 112)

    def in_water(point: np.ndarray) -> bool:
        px = np.clip((point * 112).astype(int), 0, 111)
        return bool(water[px[1], px[0]])

    for _ in range(int(rng.integers(1, 4))):
        cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.4)
        if any(math.hypot(cx - x, cy - y) < 0.8 * (radius + r) for x, y, r in layout.districts):
            continue
        angle, spacing = rng.uniform(0, math.pi / 2), rng.uniform(0.055, 0.09)
        layout.districts.append((cx, cy, radius))
        axes = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        steps = int(radius / spacing)
        for axis in range(2):
            for k in range(-steps, steps + 1):
                offset = k * spacing
                half = math.sqrt(max(radius**2 - offset**2, 0.0))
                a = np.array([cx, cy]) + offset * axes[1 - axis] - half * axes[axis]
                b = np.array([cx, cy]) + offset * axes[1 - axis] + half * axes[axis]
                roll = rng.random()
                if in_water((a + b) / 2):
                    continue
                layout.roads.append(Road(np.stack([a, b]), spacing * 0.14, major=False, on_map=roll > 0.1, on_satellite=roll < 0.8 or roll > 0.9))
        for i in range(-steps, steps):
            for j in range(-steps, steps):
                center = np.array([cx, cy]) + (i + 0.5) * spacing * axes[0] + (j + 0.5) * spacing * axes[1]
                if np.linalg.norm(center - [cx, cy]) > radius - spacing * 0.5:
                    continue
                if not (0 <= center[0] <= 1 and 0 <= center[1] <= 1) or in_water(center):
                    continue
                inner = 0.5 * spacing * 0.8
                corners = [center + sx * inner * axes[0] + sy * inner * axes[1] for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
                layout.blocks.append(np.stack(corners))
                if rng.random() < 0.08:
                    layout.parks.append(len(layout.blocks) - 1)
    return layout


def _transform(layout: CityLayout, matrix: np.ndarray, shift: np.ndarray) -> CityLayout:
    """The layout under p -> matrix (p - c) + c + shift, c the image centre (a similarity transform)."""
    def move(points: np.ndarray | None) -> np.ndarray | None:
        return None if points is None else (points - 0.5) @ matrix.T + 0.5 + shift

    scale = math.sqrt(abs(np.linalg.det(matrix)))
    return CityLayout(
        roads=[Road(move(r.points), r.width * scale, r.major, r.on_map, r.on_satellite) for r in layout.roads],
        river=move(layout.river), river_width=layout.river_width * scale, sea=move(layout.sea),
        blocks=[move(b) for b in layout.blocks], parks=list(layout.parks),
        districts=[(*move(np.array([cx, cy])), r * scale) for cx, cy, r in layout.districts],
    )


def _noise(rng: np.random.Generator, cells: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Smooth value noise in [0, 1]: random cells upsampled bicubically."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _polyline(draw: ImageDraw.ImageDraw, points: np.ndarray, fill, width: float) -> None:
    draw.line([tuple(p) for p in points * IMAGE_SIZE], fill=fill, width=max(1, int(round(width * IMAGE_SIZE))), joint="curve")


def _polygon(draw: ImageDraw.ImageDraw, points: np.ndarray, fill=None, outline=None) -> None:
    draw.polygon([tuple(p) for p in points * IMAGE_SIZE], fill=fill, outline=outline)


def render_satellite(layout: CityLayout, rng: np.random.Generator) -> Image.Image:
    low, mid = _noise(rng, 4), _noise(rng, 14)
    grass, dry, forest = np.array([88, 110, 62.0]), np.array([150, 140, 100.0]), np.array([45, 70, 40.0])
    mix = np.clip(low * 1.4 - 0.2, 0, 1)[..., None]
    base = grass * (1 - mix) + dry * mix
    base = np.where((mid > 0.62)[..., None], forest, base) + (mid[..., None] - 0.5) * 30
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for cx, cy, radius in layout.districts:
        r = radius * IMAGE_SIZE
        draw.ellipse([cx * IMAGE_SIZE - r, cy * IMAGE_SIZE - r, cx * IMAGE_SIZE + r, cy * IMAGE_SIZE + r], fill=(140, 135, 125))
    roofs = [(170, 90, 70), (120, 118, 115), (200, 195, 185), (150, 110, 80), (90, 90, 95)]
    parks = set(layout.parks)
    for index, block in enumerate(layout.blocks):
        if index in parks:
            _polygon(draw, block, fill=(40, 80, 40))
            continue
        # The block's shadow, then 2x2 buildings with their own roofs.
        _polygon(draw, block + 0.005, fill=(50, 50, 50))
        a, b, d = block[0], block[1] - block[0], block[3] - block[0]
        colours = rng.integers(len(roofs), size=4)
        for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            corner = a + (i * 0.5 + 0.04) * b + (j * 0.5 + 0.04) * d
            _polygon(draw, np.stack([corner, corner + 0.42 * b, corner + 0.42 * b + 0.42 * d, corner + 0.42 * d]), fill=roofs[colours[k]])
    water = (38, 62, 72)
    if layout.sea is not None:
        _polygon(draw, layout.sea, fill=water)
    if layout.river is not None:
        _polyline(draw, layout.river, water, layout.river_width)
    for road in layout.roads:
        if road.on_satellite:
            _polyline(draw, road.points, (175, 170, 160) if road.major else (115, 113, 108), road.width)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 1))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(0.6))


_STYLES = (
    # paper, ink, block fill, water fill, road fill, park fill
    dict(paper=(226, 210, 172), ink=(80, 50, 30), block=None, water=(205, 200, 180), road=(232, 218, 182), park=(190, 190, 140), hatch=True),
    dict(paper=(242, 234, 212), ink=(110, 60, 50), block=(216, 152, 132), water=(168, 198, 214), road=(250, 248, 240), park=(182, 204, 150), hatch=False),
    dict(paper=(246, 246, 240), ink=(20, 20, 25), block=None, water=None, road=None, park=None, hatch=False),
    dict(paper=(222, 200, 150), ink=(90, 70, 40), block=(190, 150, 100), water=(150, 172, 160), road=(238, 222, 182), park=(165, 175, 120), hatch=False),
)


def render_old_map(layout: CityLayout, style: int, rng: np.random.Generator) -> Image.Image:
    """The layout as a historic map in `style` (0..3), slightly rotated, scaled and shifted."""
    spec = _STYLES[style % NUM_MAP_STYLES]
    angle, scale = rng.uniform(-0.14, 0.14), rng.uniform(0.85, 1.15)
    matrix = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    layout = _transform(layout, matrix, rng.uniform(-0.08, 0.08, 2))
    tint = rng.integers(-10, 10, 3)
    paper = tuple(int(c + t) for c, t in zip(spec["paper"], tint))
    ink = spec["ink"]
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), paper)
    draw = ImageDraw.Draw(image)

    water_mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    water_draw = ImageDraw.Draw(water_mask)
    if layout.sea is not None:
        _polygon(water_draw, layout.sea, fill=255)
    if layout.river is not None:
        _polyline(water_draw, layout.river, 255, layout.river_width)
    if spec["water"] is not None:
        image.paste(spec["water"], mask=water_mask)
    ripple = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), paper)
    ripple_draw = ImageDraw.Draw(ripple)
    for y in range(0, IMAGE_SIZE, 3 if style % NUM_MAP_STYLES in (0, 2) else 5):
        ripple_draw.line([(0, y), (IMAGE_SIZE, y)], fill=ink, width=1)
    if spec["hatch"] or spec["water"] is None:
        image.paste(ripple, mask=water_mask.point(lambda v: v // 2))
    edge = water_mask.filter(ImageFilter.FIND_EDGES)
    image.paste(ink, mask=edge)

    parks = set(layout.parks)
    block_mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    block_draw = ImageDraw.Draw(block_mask)
    for index, block in enumerate(layout.blocks):
        if index in parks:
            if spec["park"] is not None:
                _polygon(draw, block, fill=spec["park"])
            else:
                center = block.mean(0) * IMAGE_SIZE
                for dx, dy in rng.uniform(-3, 3, (4, 2)):
                    draw.ellipse([center[0] + dx - 1, center[1] + dy - 1, center[0] + dx + 1, center[1] + dy + 1], fill=ink)
            continue
        if spec["block"] is not None:
            _polygon(draw, block, fill=spec["block"], outline=ink)
        else:
            _polygon(draw, block, outline=ink)
            _polygon(block_draw, block, fill=255)
    if spec["hatch"]:
        hatch = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), paper)
        hatch_draw = ImageDraw.Draw(hatch)
        for k in range(-IMAGE_SIZE, IMAGE_SIZE, 3):
            hatch_draw.line([(k, 0), (k + IMAGE_SIZE, IMAGE_SIZE)], fill=ink)
        image.paste(hatch, mask=block_mask)

    for road in layout.roads:
        if not road.on_map:
            continue
        if spec["road"] is None:
            _polyline(draw, road.points, ink, road.width * 0.5)
        else:
            _polyline(draw, road.points, ink, road.width * 1.3 + 2 / IMAGE_SIZE)
            _polyline(draw, road.points, spec["road"], road.width)
    font = ImageFont.load_default(size=int(rng.integers(8, 12)))
    letters = "ABCDEFGHIJKLMNOPRSTUVW"
    for _ in range(int(rng.integers(2, 6))):
        word = "".join(letters[int(i)] for i in rng.integers(0, len(letters), int(rng.integers(4, 9))))
        draw.text(tuple(rng.uniform(10, IMAGE_SIZE - 60, 2)), word, fill=ink, font=font)
    draw.rectangle([3, 3, IMAGE_SIZE - 4, IMAGE_SIZE - 4], outline=ink, width=2)
    draw.rectangle([7, 7, IMAGE_SIZE - 8, IMAGE_SIZE - 8], outline=ink, width=1)

    # Aged paper: low-frequency stains and grain.
    stains = (_noise(rng, 5) - 0.5) * (28 if style % NUM_MAP_STYLES in (0, 3) else 12)
    pixels = np.asarray(image, dtype=np.float32) + stains[..., None] + rng.normal(0, 4, (IMAGE_SIZE, IMAGE_SIZE, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
