"""A procedurally generated stand-in for the LITE benchmark (numpy + PIL only), in LITE's layout.

    from lowres_vision.synth import generate
    root = generate(seed=0)            # ~/.cache/lowres/synth/v2-seed0, written once
    root = generate("/tmp/lite", scale=0.05, tasks=["circuits"])
"""

from .generate import default_root, generate, is_generated, sample_grid
from .plan import (
    CIRCUIT_CLASSES,
    CIRCUIT_SPLIT_SIZES,
    DRAWING_SPLIT_SIZES,
    MAP_SPLIT_SIZES,
    SPLITS,
    TASKS,
    circuit_plan,
    drawing_plan,
    map_plan,
)

__all__ = [
    "CIRCUIT_CLASSES", "CIRCUIT_SPLIT_SIZES", "DRAWING_SPLIT_SIZES", "MAP_SPLIT_SIZES", "SPLITS", "TASKS",
    "circuit_plan", "default_root", "drawing_plan", "generate", "is_generated", "map_plan", "sample_grid",
]
