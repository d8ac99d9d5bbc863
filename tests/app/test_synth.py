"""The synthetic LITE benchmark: exact split plans, byte-determinism, layout the loaders read."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lowres_vision.synth import (
    CIRCUIT_CLASSES,
    circuit_plan,
    drawing_plan,
    generate,
    is_generated,
    map_plan,
)
from lowres_vision.synth import circuits
from lowres_vision.synth.circuits import FUNCTION_PARTS, PART_SIZES, class_parts, render_circuit
from lowres_vision.synth.plan import TASKS

TINY = 0.01  # 44 circuits, 6 map rows, 12 drawing pairs


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "seed0", seed=0, scale=TINY, workers=1, progress=False)


def test_circuit_plan_matches_lite_at_full_scale():
    plan = circuit_plan(1.0)
    assert {split: len(rows) for split, rows in plan.items()} == {"train": 154, "val": 100, "test": 1078}
    train = Counter(r.label for r in plan["train"])
    assert len(CIRCUIT_CLASSES) == 32 and set(train) == set(range(32))
    assert sorted(train.values()) == [4] * 6 + [5] * 26  # 154 = 26 * 5 + 6 * 4
    val, test = Counter(r.label for r in plan["val"]), Counter(r.label for r in plan["test"])
    assert set(val) == set(range(32)) and max(val.values()) - min(val.values()) == 1
    assert len(test) == 29 and max(test.values()) - min(test.values()) == 1  # test covers 29 classes
    ids = [r.id for rows in plan.values() for r in rows]
    assert len(set(ids)) == len(ids) == 1332
    assert len({r.filename for rows in plan.values() for r in rows}) == 1332


def test_map_plan_matches_lite_at_full_scale_and_shares_satellites():
    plan = map_plan(1.0, seed=0)
    assert {split: len(rows) for split, rows in plan.items()} == {"train": 102, "val": 140, "test": 409}
    for split, rows in plan.items():
        satellites = Counter(r.satellite for r in rows)
        assert len(satellites) == round(0.8 * len(rows))  # the rest of the maps share a satellite
        assert max(satellites.values()) >= 2
        assert len({r.old_map for r in rows}) == len(rows)
        assert all(name.startswith(split) for name in satellites)
    assert map_plan(1.0, seed=0) == plan
    assert map_plan(1.0, seed=1) != plan


def test_drawing_plan_matches_lite_at_full_scale():
    plan = drawing_plan(1.0)
    assert {split: len(ids) for split, ids in plan.items()} == {"train": 300, "val": 100, "test": 754}
    ids = [i for split in plan.values() for i in split]
    assert ids == list(range(1154))


def test_scaled_plan_keeps_every_class_and_split():
    plan = circuit_plan(0.05)
    assert {split: len(rows) for split, rows in plan.items()} == {"train": 32, "val": 5, "test": 54}
    assert sorted(Counter(r.label for r in plan["train"]).values()) == [1] * 32
    assert {split: len(ids) for split, ids in drawing_plan(0.001).items()} == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="scale must be in"):
        circuit_plan(0.0)
    with pytest.raises(ValueError, match="scale must be in"):
        map_plan(1.5)


def test_written_csvs_follow_the_plan_and_the_lite_layout(tiny_root):
    plan = circuit_plan(TINY)
    assert _csv_rows(tiny_root / "circuits" / "label_map.csv") == [[str(i), name] for i, name in enumerate(CIRCUIT_CLASSES)]
    for split, rows in plan.items():
        written = _csv_rows(tiny_root / "circuits" / f"{split}_5_shots.csv")
        assert written == [[str(r.id), r.filename, str(r.label)] for r in rows]
        assert all((tiny_root / "circuits" / "data" / r.filename).is_file() for r in rows)
    for split, rows in map_plan(TINY, seed=0).items():
        written = _csv_rows(tiny_root / "historic-maps" / f"{split}.csv")
        assert written == [[r.satellite, r.old_map] for r in rows]
        assert all((tiny_root / "historic-maps" / "Satellite" / name).is_file() for row in written for name in row)
    for split, ids in drawing_plan(TINY).items():
        assert _csv_rows(tiny_root / "mechanical-drawing" / f"{split}.csv") == [[str(i)] for i in ids]
        assert all((tiny_root / "mechanical-drawing" / "data" / f"{i}-{side}.png").is_file() for i in ids for side in "ab")
    for task in TASKS:
        assert (tiny_root / f"samples_{task}.png").stat().st_size < 400_000


def test_the_application_loaders_read_the_generated_benchmark(tiny_root):
    from lowres_vision.data import load_split

    train = load_split("circuits", tiny_root, "train")
    assert len(train.paths) == 32 and sorted(set(train.labels)) == list(range(32))
    assert tuple(train.class_names) == CIRCUIT_CLASSES
    maps = load_split("historic-maps", tiny_root, "test")
    assert len(maps.query_paths) == len(map_plan(TINY)["test"])
    assert len(maps.gallery_paths) == len({r.satellite for r in map_plan(TINY)["test"]})
    drawings = load_split("mechanical-drawing", tiny_root, "test")
    assert len(drawings.query_paths) == len(drawing_plan(TINY)["test"])


def test_generation_is_byte_deterministic_across_workers_and_seeds(tiny_root, tmp_path):
    again = generate(tmp_path / "seed0", seed=0, scale=TINY, workers=2, progress=False)
    assert _tree_digest(again) == _tree_digest(tiny_root)
    other = generate(tmp_path / "seed1", seed=1, scale=TINY, tasks=["mechanical-drawing"], workers=1, progress=False)
    digest, reference = _tree_digest(other), _tree_digest(tiny_root)
    images = [name for name in digest if name.endswith("-a.png") or name.endswith("-b.png")]
    assert images and all(digest[name] != reference[name] for name in images)


def test_generate_keeps_a_finished_root_and_refuses_foreign_or_mismatched_folders(tiny_root, tmp_path):
    stamp = (tiny_root / "circuits" / "data" / "circuit_00000.png").stat().st_mtime_ns
    assert is_generated(tiny_root, seed=0, scale=TINY)
    assert not is_generated(tiny_root, seed=1, scale=TINY)
    generate(tiny_root, seed=0, scale=TINY, progress=False)
    assert (tiny_root / "circuits" / "data" / "circuit_00000.png").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="was generated with"):
        generate(tiny_root, seed=3, scale=TINY, progress=False)
    (tmp_path / "foreign" / "circuits").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a synthetic benchmark"):
        generate(tmp_path / "foreign", scale=TINY, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        generate(tmp_path / "x", tasks=["circuit"], progress=False)


def test_circuit_functions_are_distinct_sets_of_shared_parts():
    assert tuple(FUNCTION_PARTS) == CIRCUIT_CLASSES
    sets = [tuple(sorted(class_parts(label))) for label in range(len(CIRCUIT_CLASSES))]
    assert len(set(sets)) == len(sets)  # no two functions hold the same parts
    uses = Counter(part for parts in sets for part in set(parts))
    assert set(uses) == set(PART_SIZES)  # every part is used, and only known parts
    assert sum(count > 1 for count in uses.values()) >= 2 / 3 * len(uses)  # most parts are shared between functions
    # Small changes change the function: most functions have a sibling that differs in one part.
    def one_apart(a, b):
        return len(a) == len(b) and sum((Counter(a) - Counter(b)).values()) == 1
    with_sibling = [a for a in sets if any(one_apart(a, b) for b in sets if b != a)]
    assert len(with_sibling) >= len(sets) // 2


def test_a_circuit_draws_exactly_its_functions_parts(monkeypatch):
    drawn = []
    draw_part = circuits._draw_part
    monkeypatch.setattr(circuits, "_draw_part", lambda frame, part: (drawn.append(part), draw_part(frame, part)))
    for label in range(len(CIRCUIT_CLASSES)):
        for seed in range(3):
            drawn.clear()
            render_circuit(label, np.random.default_rng(seed))
            assert Counter(drawn) == Counter(class_parts(label)), (CIRCUIT_CLASSES[label], seed)
    with pytest.raises(ValueError, match="unknown circuit part 'flux capacitor'"):
        draw_part(None, "flux capacitor")


def test_every_part_stays_on_the_sheet(monkeypatch):
    # Every point and circle a part draws lies inside the image: the class-defining parts are never cut off.
    size = circuits.IMAGE_SIZE * circuits._SUPERSAMPLE
    extents: list[tuple[str, float, float]] = []

    class RecordingFrame(circuits._Frame):
        def point(self, x, y):
            px, py = super().point(x, y)
            extents.append((px, py))
            return px, py

        def circle(self, x, y, radius, filled=False):
            for dx, dy in ((radius, 0), (-radius, 0), (0, radius), (0, -radius)):
                self.point(x + dx, y + dy)
            super().circle(x, y, radius, filled)

    monkeypatch.setattr(circuits, "_Frame", RecordingFrame)
    for label in range(len(CIRCUIT_CLASSES)):
        for seed in range(6):
            render_circuit(label, np.random.default_rng(seed))
    xs, ys = np.array(extents).T
    assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= size and ys.max() <= size, (xs.min(), ys.min(), xs.max(), ys.max())


def test_sibling_circuits_differ_only_where_the_part_differs():
    # Metronome and tone generator share a 555 and a speaker; a potentiometer or a pushbutton (same
    # size, so the same layout from the same seed) decides the function.
    metronome, tone = CIRCUIT_CLASSES.index("metronome"), CIRCUIT_CLASSES.index("tone generator")
    dice = CIRCUIT_CLASSES.index("dice")
    for seed in (1, 7, 11):
        a = np.asarray(render_circuit(metronome, np.random.default_rng(seed)), dtype=np.int16)
        again = np.asarray(render_circuit(metronome, np.random.default_rng(seed)), dtype=np.int16)
        sibling = np.asarray(render_circuit(tone, np.random.default_rng(seed)), dtype=np.int16)
        other = np.asarray(render_circuit(dice, np.random.default_rng(seed)), dtype=np.int16)
        assert np.array_equal(a, again)
        changed = (np.abs(a - sibling).max(-1) > 40).mean()
        assert 0.0 < changed < 0.03, (seed, changed)
        assert (np.abs(a - other).max(-1) > 40).mean() > changed


def test_maps_sharing_a_satellite_are_different_renderings(tiny_root):
    rows = _csv_rows(tiny_root / "historic-maps" / "test.csv")
    satellites = Counter(s for s, _ in rows)
    shared = [m for s, m in rows if satellites[s] > 1]
    folder = tiny_root / "historic-maps" / "Satellite"
    if len(shared) >= 2:
        assert (folder / shared[0]).read_bytes() != (folder / shared[1]).read_bytes()
    for s, m in rows:
        assert (folder / s).read_bytes() != (folder / m).read_bytes()


def test_default_root_is_per_generator_version(monkeypatch, tmp_path):
    from lowres_vision.synth import default_root
    from lowres_vision.synth.generate import GENERATOR_VERSION

    monkeypatch.setenv("LOWRES_SYNTH_DIR", str(tmp_path))
    assert default_root(3) == tmp_path / f"v{GENERATOR_VERSION}-seed3"
    assert default_root(0, 0.5) == tmp_path / f"v{GENERATOR_VERSION}-seed0-scale0.5"
