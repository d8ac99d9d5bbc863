"""Procedural circuit schematics whose function is decided by the components they hold.

As in the LITE paper, a circuit's function shows in its components, not its layout: every
function class has a fixed set of 3-4 parts (a dice circuit has a seven-segment display and a
counter IC; a bell, like an audio amplifier, has a speaker; an LED circuit has a battery). Parts
are shared between functions, and many functions have a sibling one part away (a metronome and a
tone generator both hold a 555 timer and a speaker, and differ in a potentiometer or a pushbutton),
so changing one component changes the function. Every diagram draws its parts on a random rectilinear wire network with random
distractors (resistors, capacitors, grounds, junction dots, labels) and random part orientations,
so the layout does not identify the class.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .plan import CIRCUIT_CLASSES

IMAGE_SIZE = 224
_SUPERSAMPLE = 2  # drawn at 2x and downsampled, for anti-aliased lines

# Half the length of a part along its wire, in supersampled pixels: ICs, displays, transformers
# and the like are drawn larger than discrete parts, as in real schematics.
SMALL_PART, LARGE_PART = 24.0, 44.0
_SPAN_FIT = 2.8  # an edge holds a part of half-length h when it is longer than this many h (wire shows on both sides)
PART_SIZES = {
    **dict.fromkeys((
        "diode", "LED", "zener diode", "thyristor", "NPN transistor", "PNP transistor", "electrolytic capacitor",
        "battery", "op-amp", "switch", "pushbutton", "potentiometer", "inductor", "microphone",
        "light-dependent resistor", "thermistor", "quartz crystal", "fuse",
    ), SMALL_PART),
    **dict.fromkeys((
        "transformer", "bridge rectifier", "555 timer IC", "4017 counter IC", "LM386 amplifier IC", "7805 regulator IC",
        "seven-segment display", "relay", "DC motor", "lamp", "antenna", "speaker", "buzzer",
    ), LARGE_PART),
}

# The parts of each function class, in the order of CIRCUIT_CLASSES.
FUNCTION_PARTS: dict[str, tuple[str, ...]] = {
    "power supply": ("transformer", "bridge rectifier", "electrolytic capacitor", "fuse"),
    "LED": ("battery", "LED", "switch"),
    "amplifier": ("NPN transistor", "electrolytic capacitor", "potentiometer"),
    "sensor": ("light-dependent resistor", "op-amp", "LED"),
    "motor driver": ("DC motor", "NPN transistor", "diode"),
    "audio amplifier": ("LM386 amplifier IC", "speaker", "microphone"),
    "dice": ("seven-segment display", "4017 counter IC", "pushbutton"),
    "bell": ("speaker", "switch", "battery"),
    "battery charger": ("transformer", "diode", "battery"),
    "timer": ("555 timer IC", "electrolytic capacitor", "LED"),
    "oscillator": ("NPN transistor", "quartz crystal", "inductor"),
    "voltage regulator": ("7805 regulator IC", "electrolytic capacitor", "diode"),
    "inverter": ("transformer", "NPN transistor", "PNP transistor", "battery"),
    "metronome": ("555 timer IC", "speaker", "potentiometer"),
    "alarm": ("555 timer IC", "buzzer", "switch"),
    "radio transmitter": ("antenna", "NPN transistor", "microphone"),
    "radio receiver": ("antenna", "diode", "speaker"),
    "light dimmer": ("lamp", "thyristor", "potentiometer"),
    "touch switch": ("relay", "NPN transistor", "pushbutton"),
    "water level indicator": ("buzzer", "NPN transistor", "LED"),
    "temperature controller": ("thermistor", "op-amp", "relay"),
    "tone generator": ("555 timer IC", "speaker", "pushbutton"),
    "voltage doubler": ("diode", "diode", "electrolytic capacitor"),
    "battery monitor": ("battery", "zener diode", "LED"),
    "fan controller": ("DC motor", "thermistor", "NPN transistor"),
    "clap switch": ("microphone", "relay", "NPN transistor"),
    "night lamp": ("light-dependent resistor", "relay", "lamp"),
    "metal detector": ("inductor", "555 timer IC", "buzzer"),
    "relay": ("relay", "diode", "NPN transistor"),
    "jammer": ("antenna", "555 timer IC", "inductor"),
    "intercom": ("LM386 amplifier IC", "speaker", "microphone", "switch"),
    "signal fader": ("op-amp", "potentiometer", "electrolytic capacitor"),
}
assert tuple(FUNCTION_PARTS) == CIRCUIT_CLASSES

# Reference designator prefix of each part, written beside it as on real schematics.
_DESIGNATORS = {
    "diode": "D", "LED": "D", "zener diode": "D", "thyristor": "SCR", "NPN transistor": "Q", "PNP transistor": "Q",
    "electrolytic capacitor": "C", "battery": "B", "op-amp": "U", "switch": "S", "pushbutton": "S",
    "potentiometer": "VR", "inductor": "L", "microphone": "MIC", "light-dependent resistor": "LDR", "thermistor": "TH",
    "quartz crystal": "X", "fuse": "F", "transformer": "T", "bridge rectifier": "BR", "555 timer IC": "U",
    "4017 counter IC": "U", "LM386 amplifier IC": "U", "7805 regulator IC": "U", "seven-segment display": "DS",
    "relay": "K", "DC motor": "M", "lamp": "LP", "antenna": "ANT", "speaker": "LS", "buzzer": "BZ",
}


def class_parts(label: int) -> tuple[str, ...]:
    """The parts every circuit of class `label` (an index into CIRCUIT_CLASSES) holds."""
    return FUNCTION_PARTS[CIRCUIT_CLASSES[label]]


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's default font at `size` px, loaded once per size (loading it costs more than drawing a part)."""
    return ImageFont.load_default(size=size)


class _Frame:
    """Maps symbol-local coordinates (the symbol spans x in [-1, 1] along its wire) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, half: float, angle_deg: int, width: int, ink):
        self.draw, self.cx, self.cy, self.half, self.width, self.ink = draw, cx, cy, half, width, ink
        self.font = _font(max(8, int(half * 0.42)))
        angle = math.radians(angle_deg)
        self.cos, self.sin = round(math.cos(angle)), round(math.sin(angle))

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.half * (x * self.cos - y * self.sin), self.cy + self.half * (x * self.sin + y * self.cos))

    def line(self, *points: tuple[float, float], width: int | None = None) -> None:
        self.draw.line([self.point(*p) for p in points], fill=self.ink, width=width or self.width, joint="curve")

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.polygon((x0, y0), (x1, y0), (x1, y1), (x0, y1))

    def text(self, x: float, y: float, text: str) -> None:
        """Upright text centred on a local point (part markings are not rotated with the part)."""
        self.draw.text(self.point(x, y), text, fill=self.ink, font=self.font, anchor="mm")

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


def _leads(f: _Frame, left: float, right: float) -> None:
    """The wire from each end of the part's span to its body."""
    f.line((-1, 0), (left, 0))
    f.line((right, 0), (1, 0))


def _diode(f: _Frame, x0: float = -0.45, x1: float = 0.45) -> None:
    f.polygon((x0, -0.45), (x0, 0.45), (x1, 0), filled=True)
    f.line((x1, -0.45), (x1, 0.45))


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


def _ic(f: _Frame, marking: str, pins_per_side: int) -> None:
    """A DIP package: a box with pins on both sides and its type number."""
    height = 0.11 * pins_per_side + 0.1  # a 16-pin package stays within one half-length of its wire
    _leads(f, -0.8, 0.8)
    f.rect(-0.55, -height, 0.55, height)
    for k in range(pins_per_side):
        y = -height + 0.1 + (2 * height - 0.2) * (k + 0.5) / pins_per_side
        f.line((-0.8, y), (-0.55, y))
        f.line((0.55, y), (0.8, y))
    f.text(0, 0, marking)


def _draw_part(f: _Frame, part: str) -> None:
    if part in ("diode", "LED"):
        _leads(f, -0.45, 0.45)
        _diode(f)
        if part == "LED":
            f.arrow((0.0, -0.55), (0.35, -0.95), head=0.2)
            f.arrow((0.3, -0.45), (0.65, -0.85), head=0.2)
    elif part == "thyristor":
        _leads(f, -0.45, 0.45)
        _diode(f)
        f.line((0.45, 0.2), (0.85, 0.7))
    elif part == "zener diode":
        _leads(f, -0.45, 0.45)
        f.polygon((-0.45, -0.45), (-0.45, 0.45), (0.45, 0), filled=True)
        f.line((0.25, -0.6), (0.45, -0.45), (0.45, 0.45), (0.65, 0.6))
    elif part in ("NPN transistor", "PNP transistor"):
        _transistor(f, pnp=part == "PNP transistor")
    elif part == "electrolytic capacitor":
        _leads(f, -0.15, 0.1)
        f.line((-0.15, -0.5), (-0.15, 0.5))
        f.arc(0.75, 0, 0.65, 140, 220)
        f.line((-0.55, -0.55), (-0.35, -0.55))
        f.line((-0.45, -0.65), (-0.45, -0.45))
    elif part == "battery":
        _leads(f, -0.35, 0.35)
        for x in (-0.35, 0.15):
            f.line((x, -0.55), (x, 0.55))
            f.line((x + 0.2, -0.25), (x + 0.2, 0.25), width=f.width * 2)
    elif part == "op-amp":
        f.polygon((-0.6, -0.8), (-0.6, 0.8), (0.7, 0))
        f.line((-1, 0), (-0.8, 0), (-0.8, -0.4), (-0.6, -0.4))
        f.line((-0.6, 0.4), (-0.8, 0.4), (-0.8, 0.75))
        f.line((-0.5, -0.4), (-0.3, -0.4))
        f.line((-0.5, 0.4), (-0.3, 0.4))
        f.line((-0.4, 0.3), (-0.4, 0.5))
        f.line((0.7, 0), (1, 0))
    elif part == "speaker":
        f.line((-1, 0), (-0.55, 0))
        f.polygon((-0.55, -0.3), (-0.2, -0.3), (-0.2, 0.3), (-0.55, 0.3))
        f.polygon((-0.2, -0.3), (0.35, -0.75), (0.35, 0.75), (-0.2, 0.3))
        f.line((0.35, 0.75), (1, 0.75), (1, 0))
    elif part == "switch":
        _leads(f, -0.55, 0.55)
        f.circle(-0.5, 0, 0.07, filled=True)
        f.line((-0.5, 0), (0.45, -0.45))
        f.circle(0.5, 0, 0.07, filled=True)
    elif part == "pushbutton":
        _leads(f, -0.5, 0.5)
        f.circle(-0.5, 0, 0.08, filled=True)
        f.circle(0.5, 0, 0.08, filled=True)
        f.line((-0.55, -0.3), (0.55, -0.3))
        f.line((0, -0.3), (0, -0.75))
        f.line((-0.25, -0.75), (0.25, -0.75))
    elif part == "potentiometer":
        _resistor(f)
        f.arrow((0.25, 0.85), (0.0, 0.3), head=0.22)
    elif part == "inductor":
        _leads(f, -0.6, 0.6)
        for i in range(4):
            f.arc(-0.45 + 0.3 * i, 0, 0.15, 180, 360)
    elif part == "microphone":
        _leads(f, -0.65, 0.25)
        f.circle(-0.2, 0, 0.45)
        f.line((-0.65, -0.45), (-0.65, 0.45))
    elif part == "light-dependent resistor":
        f.circle(0, 0, 0.75)
        _resistor(f, scale=0.55)
        f.arrow((-0.85, -1.05), (-0.4, -0.6), head=0.2)
        f.arrow((-0.45, -1.2), (0.0, -0.75), head=0.2)
    elif part == "thermistor":
        _leads(f, -0.5, 0.5)
        f.rect(-0.5, -0.22, 0.5, 0.22)
        f.line((-0.6, 0.5), (0.45, -0.5), (0.7, -0.5))
    elif part == "quartz crystal":
        _leads(f, -0.35, 0.35)
        f.line((-0.35, -0.45), (-0.35, 0.45))
        f.line((0.35, -0.45), (0.35, 0.45))
        f.rect(-0.18, -0.55, 0.18, 0.55)
    elif part == "fuse":
        f.rect(-0.5, -0.2, 0.5, 0.2)
        f.line((-1, 0), (1, 0))
    elif part == "transformer":
        f.line((-1, 0), (-0.75, 0), (-0.75, -0.6), (-0.35, -0.6))
        f.line((-0.35, 0.6), (-0.75, 0.6), (-0.75, 0.8))
        f.line((1, 0), (0.75, 0), (0.75, -0.6), (0.35, -0.6))
        f.line((0.35, 0.6), (0.75, 0.6), (0.75, 0.8))
        for i in range(4):
            f.arc(-0.35, -0.45 + 0.3 * i, 0.15, 270, 450)
            f.arc(0.35, -0.45 + 0.3 * i, 0.15, 90, 270)
        for x in (-0.08, 0.08):
            f.line((x, -0.7), (x, 0.7))
    elif part == "bridge rectifier":
        _leads(f, -0.8, 0.8)
        corners = ((-0.8, 0), (0, -0.8), (0.8, 0), (0, 0.8))
        for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
            f.line((ax, ay), (bx, by))
            # A small diode mid-side, pointing from the left corner round to the right one.
            if ax > bx:
                (ax, ay), (bx, by) = (bx, by), (ax, ay)
            mx, my, dx, dy = (ax + bx) / 2, (ay + by) / 2, (bx - ax) * 0.2, (by - ay) * 0.2
            f.polygon((mx - dx - dy, my - dy + dx), (mx - dx + dy, my - dy - dx), (mx + dx, my + dy), filled=True)
            f.line((mx + dx - dy, my + dy + dx), (mx + dx + dy, my + dy - dx))
    elif part == "555 timer IC":
        _ic(f, "555", 4)
    elif part == "4017 counter IC":
        _ic(f, "4017", 8)
    elif part == "LM386 amplifier IC":
        _ic(f, "LM386", 4)
    elif part == "7805 regulator IC":
        _leads(f, -0.6, 0.6)
        f.rect(-0.6, -0.4, 0.6, 0.4)
        f.line((0, 0.4), (0, 0.8))
        f.text(0, 0, "7805")
    elif part == "seven-segment display":
        _leads(f, -0.75, 0.75)
        f.rect(-0.55, -0.95, 0.55, 0.95)
        for k in range(5):
            y = -0.75 + 0.375 * k
            f.line((-0.75, y), (-0.55, y))
            f.line((0.55, y), (0.75, y))
        segments = (((-0.25, -0.65), (0.25, -0.65)), ((-0.25, 0), (0.25, 0)), ((-0.25, 0.65), (0.25, 0.65)),
                    ((-0.3, -0.6), (-0.3, -0.05)), ((0.3, -0.6), (0.3, -0.05)), ((-0.3, 0.05), (-0.3, 0.6)), ((0.3, 0.05), (0.3, 0.6)))
        for a, b in segments:
            f.line(a, b, width=f.width * 2)
    elif part == "relay":
        _leads(f, -0.85, 0.8)
        f.rect(-0.85, -0.45, -0.15, 0.45)
        f.line((-0.85, 0.45), (-0.15, -0.45))
        f.line((-0.15, 0), (0.2, 0))
        f.circle(0.2, 0, 0.06, filled=True)
        f.line((0.2, 0), (0.75, -0.35))
        f.circle(0.8, 0, 0.06, filled=True)
        for k in range(3):  # the dashed coupling from coil to contact
            f.line((-0.1 + 0.2 * k, -0.3), (0.0 + 0.2 * k, -0.3))
    elif part == "DC motor":
        _leads(f, -0.6, 0.6)
        f.circle(0, 0, 0.6)
        f.text(0, 0, "M")
    elif part == "lamp":
        _leads(f, -0.55, 0.55)
        f.circle(0, 0, 0.55)
        f.line((-0.39, -0.39), (0.39, 0.39))
        f.line((-0.39, 0.39), (0.39, -0.39))
    elif part == "antenna":
        f.line((-1, 0), (1, 0))
        f.circle(0, 0, 0.06, filled=True)
        f.line((0, 0), (0, -0.95))
        f.line((-0.4, -0.95), (0, -0.6), (0.4, -0.95))
    elif part == "buzzer":
        _leads(f, -0.6, 0.6)
        f.line((-0.6, 0), (0.6, 0))
        f.arc(0, 0, 0.6, 180, 360)
        f.text(-0.75, -0.4, "+")
    else:
        raise ValueError(f"unknown circuit part {part!r}")


def _resistor(f: _Frame, scale: float = 1.0) -> None:
    """A zigzag; `scale` < 1 draws a smaller one inside a symbol (its leads still reach the span's ends)."""
    zigzag = [(scale * (-0.5 + 0.2 * i), scale * (0.3 if i % 2 == 0 else -0.3)) for i in range(6)]
    f.line((-1, 0), (-0.6 * scale, 0), *zigzag, (0.6 * scale, 0), (1, 0))


def _capacitor(f: _Frame) -> None:
    _leads(f, -0.15, 0.15)
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
    """One 224 px RGB schematic of class `label`: its function's parts on a random wire network."""
    parts = class_parts(label)
    size = IMAGE_SIZE * _SUPERSAMPLE
    shade, yellowing = int(rng.integers(0, 12)), int(rng.integers(0, 14))
    paper = (255 - shade, 255 - shade, 255 - shade - yellowing)
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    width = int(rng.integers(2, 4))
    font = _font(int(rng.integers(13, 18)))

    cols, rows = int(rng.integers(3, 6)), int(rng.integers(3, 5))
    margin = size * 0.1
    xs = np.sort(rng.uniform(0, 1, cols)) * 0.25 + np.linspace(0, 0.75, cols)
    ys = np.sort(rng.uniform(0, 1, rows)) * 0.25 + np.linspace(0, 0.75, rows)
    xs = margin + xs / xs.max() * (size - 2 * margin)
    ys = margin + ys / ys.max() * (size - 2 * margin)
    edges = sorted(_spanning_edges(rng, cols, rows))
    lengths = [math.hypot(xs[a[0]] - xs[b[0]], ys[a[1]] - ys[b[1]]) for a, b in edges]

    # The function's parts, large ones first, each on a random free edge long enough to hold it
    # (or, failing that, the longest free edge, the part drawn smaller to fit).
    placed: dict[int, tuple[str, float]] = {}
    for part in sorted(parts, key=lambda p: -PART_SIZES[p]):
        half = PART_SIZES[part]
        free = [i for i in range(len(edges)) if i not in placed]
        fitting = [i for i in free if lengths[i] > _SPAN_FIT * half]
        edge = int(rng.choice(fitting)) if fitting else max(free, key=lambda i: lengths[i])
        placed[edge] = (part, min(half, lengths[edge] / _SPAN_FIT))
    degree: dict[tuple[int, int], int] = {}
    counters: dict[str, int] = {}
    for i, (a, b) in enumerate(edges):
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
        (x0, y0), (x1, y1) = (xs[a[0]], ys[a[1]]), (xs[b[0]], ys[b[1]])
        horizontal = y0 == y1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if i in placed:
            part, half = placed[i]
        elif lengths[i] > _SPAN_FIT * SMALL_PART:
            part, half = str(rng.choice(["wire", "resistor", "resistor", "capacitor"])), SMALL_PART
        else:
            part = "wire"
        if part == "wire":
            draw.line([(x0, y0), (x1, y1)], fill=ink, width=width)
            continue
        # Wire up to the part's ends, then the part in its own frame, in a random orientation.
        if horizontal:
            draw.line([(x0, y0), (cx - half, cy)], fill=ink, width=width)
            draw.line([(cx + half, cy), (x1, y1)], fill=ink, width=width)
        else:
            draw.line([(x0, y0), (cx, cy - half)], fill=ink, width=width)
            draw.line([(cx, cy + half), (x1, y1)], fill=ink, width=width)
        angle = (0 if horizontal else 90) + (180 if rng.random() < 0.5 else 0)
        frame = _Frame(draw, cx, cy, half, angle, width, ink)
        if part == "resistor":
            _resistor(frame)
            prefix = "R"
        elif part == "capacitor":
            _capacitor(frame)
            prefix = "C"
        else:
            _draw_part(frame, part)
            prefix = _DESIGNATORS[part]
        counters[prefix] = counters.get(prefix, 0) + 1
        offset = (-8, -1.6 * half - 14) if horizontal else (1.6 * half + 6, -8)
        label = f"{prefix}{counters[prefix]}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        # Beside the part, but inside the sheet.
        x = min(max(cx + offset[0], -left), size - right)
        y = min(max(cy + offset[1], -top), size - bottom)
        draw.text((x, y), label, fill=ink, font=font)
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
