"""Procedural mechanical parts as a three-view line drawing ("a") and a shaded 3D render ("b").

A part is an extruded outline (rectangle, rounded plate, L, T, disc or hexagon) with through
holes in a pattern, an optional slot, an optional raised step and an optional bored boss. Parts
can differ only in their number of holes, as the paper notes for real drawings. The drawing
shows orthographic top/front/side views with hidden lines, centre lines and dimensions; the
render is a height field seen from a random viewpoint with Lambert shading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 224
_GRID = 128  # height-field cells across the part's [-0.5, 0.5]^2 footprint
OUTLINES = ("rectangle", "rounded", "L", "T", "disc", "hexagon")


@dataclass
class Part:
    outline: np.ndarray  # polygon [k, 2] in [-0.5, 0.5]^2
    thickness: float
    holes: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, radius)
    slot: tuple[float, float, float, float, float] | None = None  # (x0, y0, x1, y1, radius)
    step: tuple[float, float, float, float, float] | None = None  # raised box (x0, y0, x1, y1, height)
    boss: tuple[float, float, float, float, float] | None = None  # (x, y, radius, height, bore radius)


def _outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    w, d = rng.uniform(0.6, 0.95), rng.uniform(0.4, 0.8)
    if kind == "rectangle":
        return np.array([[-w / 2, -d / 2], [w / 2, -d / 2], [w / 2, d / 2], [-w / 2, d / 2]])
    if kind == "rounded":
        r = min(w, d) * 0.25
        corners = [(w / 2 - r, d / 2 - r, 0), (-w / 2 + r, d / 2 - r, 90), (-w / 2 + r, -d / 2 + r, 180), (w / 2 - r, -d / 2 + r, 270)]
        return np.array([[cx + r * math.cos(math.radians(a0 + t)), cy + r * math.sin(math.radians(a0 + t))]
                         for cx, cy, a0 in corners for t in np.linspace(0, 90, 7)])
    if kind == "L":
        a, b = rng.uniform(0.35, 0.55) * w, rng.uniform(0.35, 0.55) * d
        return np.array([[-w / 2, -d / 2], [w / 2, -d / 2], [w / 2, -d / 2 + b], [-w / 2 + a, -d / 2 + b], [-w / 2 + a, d / 2], [-w / 2, d / 2]])
    if kind == "T":
        a, b = rng.uniform(0.3, 0.45) * w, rng.uniform(0.35, 0.55) * d
        return np.array([[-w / 2, -d / 2], [w / 2, -d / 2], [w / 2, -d / 2 + b], [a / 2, -d / 2 + b], [a / 2, d / 2],
                         [-a / 2, d / 2], [-a / 2, -d / 2 + b], [-w / 2, -d / 2 + b]])
    sides = 48 if kind == "disc" else 6
    r = rng.uniform(0.32, 0.47)
    return np.array([[r * math.cos(2 * math.pi * k / sides), r * math.sin(2 * math.pi * k / sides)] for k in range(sides)])


def _inside(polygon: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def make_part(rng: np.random.Generator) -> Part:
    kind = OUTLINES[int(rng.integers(len(OUTLINES)))]
    outline = _outline(kind, rng)
    part = Part(outline, thickness=rng.uniform(0.06, 0.16))
    lo, hi = outline.min(0), outline.max(0)
    if kind in ("disc", "hexagon"):
        ring, count = 0.6 * (hi[0] - lo[0]) / 2, int(rng.integers(3, 9))
        start = rng.uniform(0, math.pi)
        radius = rng.uniform(0.025, 0.05)
        part.holes = [(ring * math.cos(start + 2 * math.pi * k / count), ring * math.sin(start + 2 * math.pi * k / count), radius) for k in range(count)]
        part.boss = (0.0, 0.0, ring * rng.uniform(0.45, 0.7), rng.uniform(0.08, 0.2), ring * rng.uniform(0.2, 0.35))
    else:
        cols, rows = int(rng.integers(1, 5)), int(rng.integers(1, 3))
        radius = rng.uniform(0.02, 0.045)
        margin = radius + 0.06
        xs = np.linspace(lo[0] + margin, hi[0] - margin, cols) if cols > 1 else np.array([(lo[0] + hi[0]) / 2])
        ys = np.linspace(lo[1] + margin, hi[1] - margin, rows) if rows > 1 else np.array([lo[1] + margin])
        candidates = [(float(x), float(y)) for x in xs for y in ys]
        # Keep holes whose whole circle lies inside the outline.
        for x, y in candidates:
            ring = np.linspace(0, 2 * math.pi, 12, endpoint=False)
            if _inside(outline, x + (radius + 0.03) * np.cos(ring), y + (radius + 0.03) * np.sin(ring)).all():
                part.holes.append((x, y, radius))
        if rng.random() < 0.35:
            cx, cy = (lo + hi) / 2
            if _inside(outline, np.array([cx - 0.12, cx + 0.12]), np.array([cy, cy])).all():
                part.slot = (cx - 0.08, cy, cx + 0.08, cy, rng.uniform(0.025, 0.04))
        if rng.random() < 0.5:
            split = rng.uniform(0.3, 0.6)
            part.step = (lo[0], lo[1], lo[0] + split * (hi[0] - lo[0]), hi[1], rng.uniform(0.06, 0.15))
    return part


def height_field(part: Part, grid: int = _GRID) -> np.ndarray:
    """Heights on a grid x grid raster of [-0.5, 0.5]^2 (row = y, column = x)."""
    coords = (np.arange(grid) + 0.5) / grid - 0.5
    x, y = np.meshgrid(coords, coords)
    solid = _inside(part.outline, x, y)
    height = np.where(solid, part.thickness, 0.0)
    if part.step is not None:
        x0, y0, x1, y1, extra = part.step
        height += np.where(solid & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1), extra, 0.0)
    if part.boss is not None:
        bx, by, br, bh, bore = part.boss
        height = np.where(np.hypot(x - bx, y - by) <= br, part.thickness + bh, height)
        height = np.where(np.hypot(x - bx, y - by) <= bore, 0.0, height)
    for hx, hy, hr in part.holes:
        height = np.where(np.hypot(x - hx, y - hy) <= hr, 0.0, height)
    if part.slot is not None:
        x0, y0, x1, y1, sr = part.slot
        t = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        height = np.where(np.hypot(x - (x0 + t * (x1 - x0)), y - (y0 + t * (y1 - y0))) <= sr, 0.0, height)
    return height


def render_part(part: Part, rng: np.random.Generator) -> Image.Image:
    """Shaded render from a random viewpoint: the height field's tops and walls splatted with a z-buffer."""
    height = height_field(part)
    grid = height.shape[0]
    coords = (np.arange(grid) + 0.5) / grid - 0.5
    cell = 1.0 / grid
    xs, ys, zs, normals = [], [], [], []
    rows, cols = np.nonzero(height > 0)
    xs.append(coords[cols]); ys.append(coords[rows]); zs.append(height[rows, cols])
    normals.append(np.tile([0.0, 0.0, 1.0], (rows.size, 1)))
    # Walls: where a cell is higher than its neighbour, a column of points on the shared edge.
    padded = np.pad(height, 1)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        neighbour = padded[1 + dr: 1 + dr + grid, 1 + dc: 1 + dc + grid]
        wall_r, wall_c = np.nonzero(height > neighbour)
        top, bottom = height[wall_r, wall_c], neighbour[wall_r, wall_c]
        if wall_r.size == 0:
            continue
        layers = np.arange(0, float((top - bottom).max()), cell)
        z = bottom[:, None] + layers[None, :]
        keep = z < top[:, None]
        count = keep.sum(1)
        xs.append(np.repeat(coords[wall_c] + 0.5 * dc * cell, count))
        ys.append(np.repeat(coords[wall_r] + 0.5 * dr * cell, count))
        zs.append(z[keep])
        normals.append(np.tile([float(dc), float(dr), 0.0], (int(count.sum()), 1)))
    x, y, z, normal = np.concatenate(xs), np.concatenate(ys), np.concatenate(zs), np.concatenate(normals)

    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = rng.uniform(math.radians(25), math.radians(50))
    ca, sa, ce, se = math.cos(azimuth), math.sin(azimuth), math.cos(elevation), math.sin(elevation)
    xr, yr = x * ca - y * sa, x * sa + y * ca
    n_xr, n_yr = normal[:, 0] * ca - normal[:, 1] * sa, normal[:, 0] * sa + normal[:, 1] * ca
    up = yr * se + z * ce
    closeness = -yr * ce + z * se
    scale = IMAGE_SIZE * rng.uniform(0.85, 1.0)
    u = np.floor(IMAGE_SIZE / 2 + xr * scale).astype(np.int64)
    v = np.floor(IMAGE_SIZE / 2 + 0.15 * scale - up * scale).astype(np.int64)
    # Light from the upper left of the camera, in world coordinates after the view rotation.
    light = np.array([-0.5, -0.6, 0.62])
    light /= np.linalg.norm(light)
    lambert = np.clip(n_xr * light[0] + n_yr * light[1] + normal[:, 2] * light[2], 0, 1)
    base = np.array([[175, 178, 185], [90, 120, 170], [200, 140, 60], [120, 125, 120], [190, 60, 50]][int(rng.integers(5))], dtype=np.float32)
    colour = base[None, :] * (0.35 + 0.75 * lambert[:, None])

    background = np.linspace(250, 215, IMAGE_SIZE, dtype=np.float32)[:, None, None] * np.ones((1, IMAGE_SIZE, 3), np.float32)
    # Splat each point on a 2x2 footprint so that no gaps open between cells; per pixel the
    # nearest point wins (a z-buffer by sorting, which is deterministic).
    pu = np.concatenate([u, u + 1, u, u + 1])
    pv = np.concatenate([v, v, v + 1, v + 1])
    near = np.tile(closeness, 4)
    index = np.tile(np.arange(u.size), 4)
    ok = (pu >= 0) & (pu < IMAGE_SIZE) & (pv >= 0) & (pv < IMAGE_SIZE)
    flat, near, index = pv[ok] * IMAGE_SIZE + pu[ok], near[ok], index[ok]
    order = np.lexsort((-near, flat))
    first = np.ones(order.size, dtype=bool)
    first[1:] = flat[order][1:] != flat[order][:-1]
    winners = order[first]
    depth = np.full(IMAGE_SIZE * IMAGE_SIZE, -np.inf, dtype=np.float64)
    depth[flat[winners]] = near[winners]
    depth = depth.reshape(IMAGE_SIZE, IMAGE_SIZE)
    image = background.copy()
    image.reshape(-1, 3)[flat[winners]] = colour[index[winners]]
    # Dark silhouette and crease lines where depth jumps, as CAD renders draw them.
    finite = np.where(np.isfinite(depth), depth, -1.0)
    jump = np.zeros_like(finite, dtype=bool)
    jump[:, 1:] |= np.abs(np.diff(finite, axis=1)) > 0.04
    jump[1:, :] |= np.abs(np.diff(finite, axis=0)) > 0.04
    image[jump] *= 0.45
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _dashed(draw: ImageDraw.ImageDraw, a, b, fill, width: int, dash: float = 6.0, gap: float = 4.0) -> None:
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    if length == 0:
        return
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    t = 0.0
    while t < length:
        end = min(t + dash, length)
        draw.line([(a[0] + ux * t, a[1] + uy * t), (a[0] + ux * end, a[1] + uy * end)], fill=fill, width=width)
        t = end + gap


def _profile_polygon(profile: np.ndarray, x0: float, base_y: float, scale: float) -> list[tuple[float, float]]:
    """Outline of a side view from per-column heights, from the first to the last solid column."""
    columns = np.nonzero(profile > 0)[0]
    first, last = int(columns.min()), int(columns.max())
    points = [(x0 + first * scale, base_y)]
    for i in range(first, last + 1):
        points.append((x0 + i * scale, base_y - profile[i] * scale))
        points.append((x0 + (i + 1) * scale, base_y - profile[i] * scale))
    points.append((x0 + (last + 1) * scale, base_y))
    return points


def render_drawing(part: Part, rng: np.random.Generator) -> Image.Image:
    """Three-view drawing (top view above the front view, right view beside it), drawn at 2x."""
    size = 2 * IMAGE_SIZE
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    ink, thin = (15, 15, 20), (90, 90, 100)
    font = ImageFont.load_default(size=14)
    draw.rectangle([6, 6, size - 7, size - 7], outline=ink, width=2)
    draw.rectangle([size - 150, size - 50, size - 7, size - 7], outline=ink, width=2)
    draw.line([(size - 150, size - 28), (size - 7, size - 28)], fill=ink, width=1)
    draw.text((size - 144, size - 47), f"PART {int(rng.integers(1000, 9999))}", fill=ink, font=font)
    draw.text((size - 144, size - 25), f"SCALE 1:{int(rng.integers(1, 5))}", fill=ink, font=font)

    height = height_field(part, grid=100)
    lo, hi = part.outline.min(0), part.outline.max(0)
    width, depth, tallest = hi[0] - lo[0], hi[1] - lo[1], float(height.max())
    # Pixels per height-field cell: the largest that fits top + front views in height and
    # front + side views in width (cells span 1/100 of the footprint).
    scale = min(360 / (width + depth), 270 / (depth + tallest)) / 100
    left = 30 - (lo[0] + 0.5) * 100 * scale
    top_view_top = 30 - (lo[1] + 0.5) * 100 * scale
    front_base = 30 + (depth + tallest) * 100 * scale + 40
    side_left = 30 + width * 100 * scale + 40 - (lo[1] + 0.5) * 100 * scale

    def top_xy(x: float, y: float) -> tuple[float, float]:
        return left + (x + 0.5) * 100 * scale, top_view_top + (y + 0.5) * 100 * scale

    # Top view: outline, steps, boss, holes with centre lines, slot.
    draw.polygon([top_xy(*p) for p in part.outline], outline=ink, width=3)
    if part.step is not None:
        x0, y0, x1, y1, _ = part.step
        draw.line([top_xy(x1, y0), top_xy(x1, y1)], fill=ink, width=2)
    circles = list(part.holes)
    if part.boss is not None:
        bx, by, br, _, bore = part.boss
        circles += [(bx, by, br), (bx, by, bore)]
    for hx, hy, hr in circles:
        cx, cy = top_xy(hx, hy)
        r = hr * 100 * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=2)
        _dashed(draw, (cx - r - 6, cy), (cx + r + 6, cy), thin, 1, dash=8, gap=3)
        _dashed(draw, (cx, cy - r - 6), (cx, cy + r + 6), thin, 1, dash=8, gap=3)
    if part.slot is not None:
        x0, y0, x1, y1, sr = part.slot
        (ax, ay), (bx_, by_) = top_xy(x0, y0), top_xy(x1, y1)
        r = sr * 100 * scale
        draw.rounded_rectangle([ax - r, ay - r, bx_ + r, by_ + r], radius=r, outline=ink, width=2)

    # Front view (x, z) and right view (y, z): silhouettes from the height field, holes hidden (dashed).
    front = height.max(axis=0) * 100
    side = height.max(axis=1) * 100
    draw.polygon(_profile_polygon(front, left, front_base, scale), outline=ink, width=3)
    draw.polygon(_profile_polygon(side, side_left, front_base, scale), outline=ink, width=3)
    bore = [circles[-1]] if part.boss is not None else []
    for hx, hy, hr in list(part.holes) + bore:  # through holes and the boss's bore, seen from the side
        for edge in (-hr, hr):
            fx = left + (hx + edge + 0.5) * 100 * scale
            sx = side_left + (hy + edge + 0.5) * 100 * scale
            fh = front[min(99, max(0, int((hx + 0.5) * 100)))] * scale
            sh = side[min(99, max(0, int((hy + 0.5) * 100)))] * scale
            _dashed(draw, (fx, front_base), (fx, front_base - fh), ink, 1)
            _dashed(draw, (sx, front_base), (sx, front_base - sh), ink, 1)

    # Overall width dimension under the front view, depth beside the top view.
    y_dim = front_base + 18
    xa, xb = top_xy(lo[0], 0)[0], top_xy(hi[0], 0)[0]
    draw.line([(xa, y_dim), (xb, y_dim)], fill=thin, width=1)
    for xe, sign in ((xa, 1), (xb, -1)):
        draw.polygon([(xe, y_dim), (xe + 8 * sign, y_dim - 3), (xe + 8 * sign, y_dim + 3)], fill=thin)
        draw.line([(xe, front_base + 4), (xe, y_dim + 6)], fill=thin, width=1)
    draw.text(((xa + xb) / 2 - 12, y_dim + 3), f"{(hi[0] - lo[0]) * 120:.0f}", fill=ink, font=font)
    x_dim = 30 + width * 100 * scale + 14
    ya, yb = top_xy(0, lo[1])[1], top_xy(0, hi[1])[1]
    draw.line([(x_dim, ya), (x_dim, yb)], fill=thin, width=1)
    for ye, sign in ((ya, 1), (yb, -1)):
        draw.polygon([(x_dim, ye), (x_dim - 3, ye + 8 * sign), (x_dim + 3, ye + 8 * sign)], fill=thin)
    draw.text((x_dim + 4, (ya + yb) / 2 - 7), f"{(hi[1] - lo[1]) * 120:.0f}", fill=ink, font=font)
    if part.holes:
        draw.text((x_dim + 30, 20), f"{len(part.holes)}x D{part.holes[0][2] * 240:.0f}", fill=ink, font=font)
    return image.reduce(2)
