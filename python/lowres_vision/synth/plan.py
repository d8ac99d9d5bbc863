"""Split plans of the synthetic LITE benchmark: what every CSV row will be, without rendering.

The split sizes are those of the real benchmark (the LITE paper, arXiv:2401.04716, Table 1):
circuits 154/100/1078 (32 classes, 5 shots per class in train except six rare classes with 4,
test covering 29 classes), historic maps 102/140/409 pairs, mechanical drawings 300/100/754 pairs.
`scale` shrinks every split (at least one row, and at least one train shot per class) so tests
and quick looks can render a small version with the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASKS = ("circuits", "historic-maps", "mechanical-drawing")
SPLITS = ("train", "val", "test")

# Function classes named after those the paper lists (Sec. 2.1, appendix D and Fig. 11).
CIRCUIT_CLASSES = (
    "power supply", "LED", "amplifier", "sensor", "motor driver", "audio amplifier", "dice", "bell",
    "battery charger", "timer", "oscillator", "voltage regulator", "inverter", "metronome", "alarm",
    "radio transmitter", "radio receiver", "light dimmer", "touch switch", "water level indicator",
    "temperature controller", "tone generator", "voltage doubler", "battery monitor", "fan controller",
    "clap switch", "night lamp", "metal detector", "relay", "jammer", "intercom", "signal fader",
)
NUM_CIRCUIT_CLASSES = len(CIRCUIT_CLASSES)
# The last classes are the rare ones (the paper could find only 6-7 jammers or relays): they get
# 4 train shots instead of 5 (154 = 26 * 5 + 6 * 4), and the last three have no test images
# (the real test split covers 29 classes).
CIRCUIT_SHOTS = 5
CIRCUIT_RARE_CLASSES = 6
CIRCUIT_CLASSES_WITHOUT_TEST = 3
CIRCUIT_SPLIT_SIZES = {"train": 154, "val": 100, "test": 1078}
MAP_SPLIT_SIZES = {"train": 102, "val": 140, "test": 409}
# Fraction of a split's old maps that have a satellite image of their own; the rest share one
# with another map of the same split, as several LITE maps show the same city.
MAP_UNIQUE_SATELLITE_FRACTION = 0.8
DRAWING_SPLIT_SIZES = {"train": 300, "val": 100, "test": 754}


def scaled_count(count: int, scale: float) -> int:
    """round(count * scale), but at least 1 (every split and class keeps a row)."""
    return max(1, int(round(count * scale)))


def _check_scale(scale: float) -> None:
    if not (0.0 < scale <= 1.0):
        raise ValueError(f"scale must be in (0, 1], got {scale}")


def _round_robin(count: int, labels: list[int]) -> list[int]:
    """`count` labels cycling through `labels`: class sizes differ by at most one."""
    return [labels[i % len(labels)] for i in range(count)]


@dataclass(frozen=True)
class CircuitRow:
    id: int
    filename: str
    label: int


def circuit_plan(scale: float = 1.0) -> dict[str, list[CircuitRow]]:
    """Rows of circuits/{train,val,test}_5_shots.csv. Ids are unique across splits."""
    _check_scale(scale)
    common = NUM_CIRCUIT_CLASSES - CIRCUIT_RARE_CLASSES
    train_shots = [CIRCUIT_SHOTS] * common + [CIRCUIT_SHOTS - 1] * CIRCUIT_RARE_CLASSES
    labels = {
        "train": [c for c, shots in enumerate(train_shots) for _ in range(scaled_count(shots, scale))],
        "val": _round_robin(scaled_count(CIRCUIT_SPLIT_SIZES["val"], scale), list(range(NUM_CIRCUIT_CLASSES))),
        "test": _round_robin(
            scaled_count(CIRCUIT_SPLIT_SIZES["test"], scale),
            list(range(NUM_CIRCUIT_CLASSES - CIRCUIT_CLASSES_WITHOUT_TEST)),
        ),
    }
    plan, next_id = {}, 0
    for split in SPLITS:
        rows = []
        for label in sorted(labels[split]):
            rows.append(CircuitRow(next_id, f"circuit_{next_id:05d}.png", label))
            next_id += 1
        plan[split] = rows
    return plan


@dataclass(frozen=True)
class MapRow:
    satellite: str  # today_satellite_img
    old_map: str  # old_map_img
    layout: int  # index of the city layout (one per satellite image) within the split
    style_index: int  # 0 for the first map of a layout, 1, 2, ... for maps sharing its satellite


def map_plan(scale: float = 1.0, seed: int = 0) -> dict[str, list[MapRow]]:
    """Rows of historic-maps/{train,val,test}.csv; which satellites are shared depends on the seed."""
    _check_scale(scale)
    rng = np.random.default_rng([seed, 0x6D6170])
    plan = {}
    for split in SPLITS:
        num_maps = scaled_count(MAP_SPLIT_SIZES[split], scale)
        num_layouts = max(1, int(round(num_maps * MAP_UNIQUE_SATELLITE_FRACTION)))
        layouts = list(range(num_layouts)) + sorted(rng.choice(num_layouts, num_maps - num_layouts).tolist())
        rows, seen = [], {}
        for layout in sorted(layouts):
            style_index = seen.get(layout, 0)
            seen[layout] = style_index + 1
            rows.append(MapRow(
                satellite=f"{split}_{layout:04d}_satellite.jpg",
                old_map=f"{split}_{layout:04d}_map{style_index}.jpg",
                layout=layout,
                style_index=style_index,
            ))
        plan[split] = rows
    return plan


def drawing_plan(scale: float = 1.0) -> dict[str, list[int]]:
    """Ids of mechanical-drawing/{train,val,test}.csv (images data/{id}-a.png, data/{id}-b.png)."""
    _check_scale(scale)
    plan, next_id = {}, 0
    for split in SPLITS:
        count = scaled_count(DRAWING_SPLIT_SIZES[split], scale)
        plan[split] = list(range(next_id, next_id + count))
        next_id += count
    return plan
