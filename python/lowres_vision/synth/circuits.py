"""Procedural circuit schematics whose class is decided by small details.

Every diagram is a random rectilinear wire network with random distractor parts (resistors,
capacitors, grounds, junction dots, labels), so layouts do not identify the class. The class is
one of 16 asymmetric "key" symbols (diode, LED, transistors, ...) drawn twice, in one of two
polarities: classes c and c + 16 differ only by the key symbol's orientation, and many key
symbols differ from each other only by a few pixels (an arrow, a bent bar, a gate lead).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 224
_SUPERSAMPLE = 2  # drawn at 2x and downsampled, for anti-aliased lines

KEY_SYMBOLS = (
    "diode", "led", "photodiode", "zener", "thyristor", "npn", "pnp", "electrolytic",
    "battery", "opamp", "speaker", "switch", "pushbutton", "potentiometer", "inductor", "microphone",
)


def class_key(label: int) -> tuple[str, bool]:
    """(key symbol, reversed polarity) of a class label in [0, 32)."""
    return KEY_SYMBOLS[label % len(KEY_SYMBOLS)], label >= len(KEY_SYMBOLS)


class _Frame:
    """Maps symbol-local coordinates (the symbol spans x in [-1, 1] along its wire) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, half: float, angle_deg: int, width: int, ink):
        self.draw, self.cx, self.cy, self.half, self.width, self.ink = draw, cx, cy, half, width, ink
        angle = math.radians(angle_deg)
        self.cos, self.sin = round(math.cos(angle)), round(math.sin(angle))

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.half * (x * self.cos - y * self.sin), self.cy + self.half * (x * self.sin + y * self.cos))

    def line(self, *points: tuple[float, float], width: int | None = None) -> None:
        self.draw.line([self.point(*p) for p in points], fill=self.ink, width=width or self.width, joint="curve")

    def polygon(self, *points: tuple[float, float], filled: bool = False) -> None:
        self.draw.polygon([self.point(*p) for p in points], outline=self.ink, fill=self.ink if filled else None, width=self.width)

    def circle(self, x: float, y: float, radius: float, filled: bool = False) -> None:
        px, py = self.point(x, y)
        r = radius * self.half
        self.draw.ellipse([px - r, py - r, px + r, py + r], outline=self.ink, fill=self.ink if filled else None, width=self.width)

    def arc(self, x: float, y: float, radius: float, start: float, end: float) -> None:
        """Arc in local degrees (0 = +x, 90 = +y), rotated with the frame."""
        px, py = self.point(x, y)
        r = radius * self.half
        turn = math.degrees(math.atan2(self.sin, self.cos))
        self.draw.arc([px - r, py - r, px + r, py + r], start + turn, end + turn, fill=self.ink, width=self.width)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], head: float = 0.25) -> None:
        self.line(start, end)
        dx, dy = end[0] - start[0], end[1] - start[1]
        norm = math.hypot(dx, dy)
        ux, uy = dx / norm, dy / norm
        left = (end[0] - head * (ux - 0.5 * uy), end[1] - head * (uy + 0.5 * ux))
        right = (end[0] - head * (ux + 0.5 * uy), end[1] - head * (uy - 0.5 * ux))
        self.polygon(end, left, right, filled=True)


def _diode_body(f: _Frame) -> None:
    f.line((-1, 0), (-0.45, 0))
    f.line((0.45, 0), (1, 0))
    f.polygon((-0.45, -0.45), (-0.45, 0.45), (0.45, 0), filled=True)
    f.line((0.45, -0.45), (0.45, 0.45))


def _transistor(f: _Frame, pnp: bool) -> None:
    f.circle(0, 0, 0.75)
    f.line((-1, 0), (-0.3, 0))
    f.line((-0.3, -0.45), (-0.3, 0.45))
    f.line((-0.3, -0.2), (0.35, -0.6), (0.35, -0.95))
    if pnp:
        f.arrow((0.35, 0.6), (-0.22, 0.24), head=0.28)
    else:
        f.arrow((-0.3, 0.2), (0.3, 0.57), head=0.28)
    f.line((0.35, 0.6), (0.75, 0.6), (1, 0))


def _draw_key(f: _Frame, symbol: str) -> None:
    if symbol in ("diode", "led", "photodiode", "thyristor"):
        _diode_body(f)
        if symbol == "led":
            f.arrow((0.0, -0.55), (0.35, -0.95), head=0.2)
            f.arrow((0.3, -0.45), (0.65, -0.85), head=0.2)
        elif symbol == "photodiode":
            f.arrow((0.35, -0.95), (0.0, -0.55), head=0.2)
            f.arrow((0.65, -0.85), (0.3, -0.45), head=0.2)
        elif symbol == "thyristor":
            f.line((0.45, 0.2), (0.85, 0.7))
    elif symbol == "zener":
        f.line((-1, 0), (-0.45, 0))
        f.line((0.45, 0), (1, 0))
        f.polygon((-0.45, -0.45), (-0.45, 0.45), (0.45, 0), filled=True)
        f.line((0.25, -0.6), (0.45, -0.45), (0.45, 0.45), (0.65, 0.6))
    elif symbol in ("npn", "pnp"):
        _transistor(f, pnp=symbol == "pnp")
    elif symbol == "electrolytic":
        f.line((-1, 0), (-0.15, 0))
        f.line((-0.15, -0.5), (-0.15, 0.5))
        f.arc(0.75, 0, 0.65, 140, 220)
        f.line((0.1, 0), (1, 0))
        f.line((-0.55, -0.55), (-0.35, -0.55))
        f.line((-0.45, -0.65), (-0.45, -0.45))
    elif symbol == "battery":
        f.line((-1, 0), (-0.35, 0))
        f.line((0.35, 0), (1, 0))
        for x in (-0.35, 0.15):
            f.line((x, -0.55), (x, 0.55))
            f.line((x + 0.2, -0.25), (x + 0.2, 0.25), width=f.width * 2)
    elif symbol == "opamp":
        f.polygon((-0.6, -0.8), (-0.6, 0.8), (0.7, 0))
        f.line((-1, 0), (-0.8, 0), (-0.8, -0.4), (-0.6, -0.4))
        f.line((-0.6, 0.4), (-0.8, 0.4), (-0.8, 0.75))
        f.line((-0.5, -0.4), (-0.3, -0.4))
        f.line((-0.5, 0.4), (-0.3, 0.4))
        f.line((-0.4, 0.3), (-0.4, 0.5))
        f.line((0.7, 0), (1, 0))
    elif symbol == "speaker":
        f.line((-1, 0), (-0.55, 0))
        f.polygon((-0.55, -0.3), (-0.2, -0.3), (-0.2, 0.3), (-0.55, 0.3))
        f.polygon((-0.2, -0.3), (0.35, -0.75), (0.35, 0.75), (-0.2, 0.3))
        f.line((0.35, 0.75), (1, 0.75), (1, 0))
    elif symbol == "switch":
        f.line((-1, 0), (-0.55, 0))
        f.circle(-0.5, 0, 0.07, filled=True)
        f.line((-0.5, 0), (0.45, -0.45))
        f.circle(0.5, 0, 0.07, filled=True)
        f.line((0.55, 0), (1, 0))
    elif symbol == "pushbutton":
        f.line((-1, 0), (-0.5, 0))
        f.line((0.5, 0), (1, 0))
        f.circle(-0.5, 0, 0.08, filled=True)
        f.circle(0.5, 0, 0.08, filled=True)
        f.line((-0.55, -0.3), (0.55, -0.3))
        f.line((0, -0.3), (0, -0.75))
        f.line((-0.25, -0.75), (0.25, -0.75))
    elif symbol == "potentiometer":
        _resistor(f)
        f.arrow((0.25, 0.85), (0.0, 0.3), head=0.22)
    elif symbol == "inductor":
        f.line((-1, 0), (-0.6, 0))
        for i in range(4):
            f.arc(-0.45 + 0.3 * i, 0, 0.15, 180, 360)
        f.line((0.6, 0), (1, 0))
    elif symbol == "microphone":
        f.line((-1, 0), (-0.65, 0))
        f.circle(-0.2, 0, 0.45)
        f.line((-0.65, -0.45), (-0.65, 0.45))
        f.line((0.25, 0), (1, 0))
    else:
        raise ValueError(f"unknown key symbol {symbol!r}")


def _resistor(f: _Frame) -> None:
    zigzag = [(-1, 0), (-0.6, 0)] + [(-0.5 + 0.2 * i, 0.3 if i % 2 == 0 else -0.3) for i in range(6)] + [(0.6, 0), (1, 0)]
    f.line(*zigzag)


def _capacitor(f: _Frame) -> None:
    f.line((-1, 0), (-0.15, 0))
    f.line((0.15, 0), (1, 0))
    f.line((-0.15, -0.5), (-0.15, 0.5))
    f.line((0.15, -0.5), (0.15, 0.5))


def _spanning_edges(rng: np.random.Generator, cols: int, rows: int) -> set[tuple[tuple[int, int], tuple[int, int]]]:
    """A random spanning tree of the node grid (randomised DFS) plus a few extra edges (loops)."""
    def neighbours(node):
        c, r = node
        return [(c + dc, r + dr) for dc, dr in ((1, 0), (-1, 0), (0, 1), (0, -1)) if 0 <= c + dc < cols and 0 <= r + dr < rows]

    start = (int(rng.integers(cols)), int(rng.integers(rows)))
    visited, stack, edges = {start}, [start], set()
    while stack:
        node = stack[-1]
        options = [n for n in neighbours(node) if n not in visited]
        if not options:
            stack.pop()
            continue
        nxt = options[int(rng.integers(len(options)))]
        edges.add(tuple(sorted((node, nxt))))
        visited.add(nxt)
        stack.append(nxt)
    for c in range(cols):
        for r in range(rows):
            for n in neighbours((c, r)):
                if rng.random() < 0.15:
                    edges.add(tuple(sorted(((c, r), n))))
    return edges


def render_circuit(label: int, rng: np.random.Generator) -> Image.Image:
    """One 224 px RGB schematic of class `label`."""
    symbol, reverse = class_key(label)
    size = IMAGE_SIZE * _SUPERSAMPLE
    shade, yellowing = int(rng.integers(0, 12)), int(rng.integers(0, 14))
    paper = (255 - shade, 255 - shade, 255 - shade - yellowing)
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    width = int(rng.integers(2, 4))
    font = ImageFont.load_default(size=int(rng.integers(13, 18)))

    cols, rows = int(rng.integers(4, 6)), int(rng.integers(3, 5))
    margin = size * 0.1
    xs = np.sort(rng.uniform(0, 1, cols)) * 0.25 + np.linspace(0, 0.75, cols)
    ys = np.sort(rng.uniform(0, 1, rows)) * 0.25 + np.linspace(0, 0.75, rows)
    xs = margin + xs / xs.max() * (size - 2 * margin)
    ys = margin + ys / ys.max() * (size - 2 * margin)
    edges = sorted(_spanning_edges(rng, cols, rows))
    # The key symbol sits on two edges long enough to hold it; distractors fill the rest.
    half = 20.0
    long_edges = [i for i, (a, b) in enumerate(edges) if math.hypot(xs[a[0]] - xs[b[0]], ys[a[1]] - ys[b[1]]) > 3.2 * half]
    key_edges = set(rng.choice(long_edges, size=min(2, len(long_edges)), replace=False).tolist())
    degree: dict[tuple[int, int], int] = {}
    counters = {"R": 0, "C": 0, "Q": 0}
    for i, (a, b) in enumerate(edges):
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
        (x0, y0), (x1, y1) = (xs[a[0]], ys[a[1]]), (xs[b[0]], ys[b[1]])
        horizontal = y0 == y1
        length = abs(x1 - x0) if horizontal else abs(y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if i in key_edges:
            kind = "key"
        elif length > 3.2 * half:
            kind = str(rng.choice(["wire", "resistor", "resistor", "capacitor"]))
        else:
            kind = "wire"
        if kind == "wire":
            draw.line([(x0, y0), (x1, y1)], fill=ink, width=width)
            continue
        # Wire up to the symbol's ends, then the symbol in its own frame.
        if horizontal:
            draw.line([(x0, y0), (cx - half, cy)], fill=ink, width=width)
            draw.line([(cx + half, cy), (x1, y1)], fill=ink, width=width)
        else:
            draw.line([(x0, y0), (cx, cy - half)], fill=ink, width=width)
            draw.line([(cx, cy + half), (x1, y1)], fill=ink, width=width)
        base_angle = 0 if horizontal else 90
        if kind == "key":
            frame = _Frame(draw, cx, cy, half, base_angle + (180 if reverse else 0), width, ink)
            _draw_key(frame, symbol)
            prefix = "Q"
        else:
            frame = _Frame(draw, cx, cy, half, base_angle, width, ink)
            (_resistor if kind == "resistor" else _capacitor)(frame)
            prefix = "R" if kind == "resistor" else "C"
        counters[prefix] += 1
        offset = (-8, -half - 20) if horizontal else (half + 6, -8)
        draw.text((cx + offset[0], cy + offset[1]), f"{prefix}{counters[prefix]}", fill=ink, font=font)
    for node, count in degree.items():
        if count >= 3:
            x, y = xs[node[0]], ys[node[1]]
            draw.ellipse([x - 2.5 * width, y - 2.5 * width, x + 2.5 * width, y + 2.5 * width], fill=ink)
    # Supply and ground terminals on the top and bottom rows.
    top = [n for n in degree if n[1] == 0]
    bottom = [n for n in degree if n[1] == rows - 1]
    vcc = top[int(rng.integers(len(top)))]
    draw.line([(xs[vcc[0]], ys[vcc[1]]), (xs[vcc[0]], ys[vcc[1]] - 18)], fill=ink, width=width)
    draw.text((xs[vcc[0]] - 14, ys[vcc[1]] - 38), "+V", fill=ink, font=font)
    gnd = bottom[int(rng.integers(len(bottom)))]
    gx, gy = xs[gnd[0]], ys[gnd[1]] + 18
    draw.line([(gx, gy - 18), (gx, gy)], fill=ink, width=width)
    for k, w in enumerate((14, 9, 4)):
        draw.line([(gx - w, gy + 5 * k), (gx + w, gy + 5 * k)], fill=ink, width=width)
    return image.reduce(_SUPERSAMPLE)
