"""Drawing primitives shared by the corpus's kinds and its scenes: a uniform pick and shape outlines."""

from __future__ import annotations

import math

import numpy as np


def pick(rng: np.random.Generator, options):
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def shape_polygon(shape: str, cx: float, cy: float, r: float, direction: int) -> list[tuple[float, float]]:
    """Outline points of the polygonal shapes; `direction` 0..3 turns up/right/down/left."""
    if shape == "square":
        angles, radius = [45, 135, 225, 315], [r * 1.2] * 4
    elif shape == "diamond":
        angles, radius = [0, 90, 180, 270], [r * 1.2] * 4
    elif shape == "pentagon":
        angles, radius = [-90 + 72 * k for k in range(5)], [r] * 5
    elif shape == "triangle":
        angles, radius = [-90, 30, 150], [r * 1.15] * 3
    elif shape == "star":
        angles, radius = [-90 + 36 * k for k in range(10)], [r if k % 2 == 0 else r * 0.42 for k in range(10)]
    elif shape == "cross":
        w = r * 0.36
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        return [(cx + x, cy + y) for x, y in pts]
    elif shape == "arrow":
        w, h = r * 0.3, r * 0.55
        pts = [(0, -r), (r * 0.8, -r + h * 1.3), (w, -r + h * 1.3), (w, r), (-w, r), (-w, -r + h * 1.3), (-r * 0.8, -r + h * 1.3)]
        turn = math.radians(90 * direction)
        return [(cx + x * math.cos(turn) - y * math.sin(turn), cy + x * math.sin(turn) + y * math.cos(turn)) for x, y in pts]
    elif shape == "heart":
        t = np.linspace(0, 2 * math.pi, 40)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(cx + r * a / 16, cy + r * b / 16) for a, b in zip(x, y)]
    else:
        raise ValueError(f"no polygon for {shape!r}")
    turn = 90 * direction if shape == "triangle" else 0
    return [(cx + d * math.cos(math.radians(a + turn)), cy + d * math.sin(math.radians(a + turn))) for a, d in zip(angles, radius)]
