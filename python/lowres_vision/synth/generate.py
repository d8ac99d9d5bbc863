"""Writes the synthetic benchmark in the LITE on-disk layout, deterministically.

Every image is rendered from its own generator, seeded by (seed, task, split, index), so the
output is byte-identical whatever the number of worker processes and the order they finish in.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from . import circuits, drawings, maps
from .plan import CIRCUIT_CLASSES, TASKS, circuit_plan, drawing_plan, map_plan

GENERATOR_VERSION = 2  # 2: circuit functions are sets of parts
MANIFEST = "synth.json"
_TASK_CODES = {"circuits": 1, "historic-maps": 2, "mechanical-drawing": 3}


def default_root(seed: int = 0, scale: float = 1.0) -> Path:
    """Cache folder for a (seed, scale) of this generator version: $LOWRES_SYNTH_DIR or ~/.cache/lowres/synth,
    one subfolder each, so a benchmark rendered by an earlier version is kept, not refused or mixed."""
    base = Path(os.environ.get("LOWRES_SYNTH_DIR", Path.home() / ".cache" / "lowres" / "synth"))
    return base / (f"v{GENERATOR_VERSION}-seed{seed}" if scale == 1.0 else f"v{GENERATOR_VERSION}-seed{seed}-scale{scale:g}")


def _rng(seed: int, task: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _TASK_CODES[task], *keys])


def _save(image: Image.Image, path: Path) -> None:
    # Photographic images (maps, satellites) as JPEG like most of LITE's; line art as PNG.
    # Low PNG compression: zlib time dominates rendering otherwise, and the files stay small.
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG", compress_level=1)


def _circuit_job(seed: int, out: str, split_index: int, row_id: int, filename: str, label: int) -> None:
    image = circuits.render_circuit(label, _rng(seed, "circuits", split_index, row_id))
    _save(image, Path(out) / "circuits" / "data" / filename)


def _map_job(seed: int, out: str, split_index: int, layout_index: int, satellite: str, old_maps: list[tuple[int, str]]) -> None:
    layout_rng = _rng(seed, "historic-maps", split_index, layout_index, 0)
    layout = maps.make_layout(layout_rng)
    first_style = int(layout_rng.integers(maps.NUM_MAP_STYLES))
    folder = Path(out) / "historic-maps" / "Satellite"
    _save(maps.render_satellite(layout, _rng(seed, "historic-maps", split_index, layout_index, 1)), folder / satellite)
    for style_index, name in old_maps:
        rng = _rng(seed, "historic-maps", split_index, layout_index, 2 + style_index)
        _save(maps.render_old_map(layout, first_style + style_index, rng), folder / name)


def _drawing_job(seed: int, out: str, split_index: int, part_id: int) -> None:
    part = drawings.make_part(_rng(seed, "mechanical-drawing", split_index, part_id, 0))
    folder = Path(out) / "mechanical-drawing" / "data"
    _save(drawings.render_drawing(part, _rng(seed, "mechanical-drawing", split_index, part_id, 1)), folder / f"{part_id}-a.png")
    _save(drawings.render_part(part, _rng(seed, "mechanical-drawing", split_index, part_id, 2)), folder / f"{part_id}-b.png")


_JOBS = {"circuits": _circuit_job, "historic-maps": _map_job, "mechanical-drawing": _drawing_job}


def _run(job: tuple) -> None:
    kind, args = job
    _JOBS[kind](*args)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _prepare_task(root: Path, task: str, seed: int, scale: float) -> list[tuple]:
    """Writes the task's CSVs and folders; returns the rendering jobs."""
    out = str(root)
    jobs: list[tuple] = []
    if task == "circuits":
        (root / task / "data").mkdir(parents=True)
        _write_csv(root / task / "label_map.csv", ("id", "name"), enumerate(CIRCUIT_CLASSES))
        for split_index, (split, rows) in enumerate(circuit_plan(scale).items()):
            _write_csv(root / task / f"{split}_5_shots.csv", ("id", "filename", "label"), [(r.id, r.filename, r.label) for r in rows])
            jobs += [("circuits", (seed, out, split_index, r.id, r.filename, r.label)) for r in rows]
    elif task == "historic-maps":
        (root / task / "Satellite").mkdir(parents=True)
        for split_index, (split, rows) in enumerate(map_plan(scale, seed).items()):
            _write_csv(root / task / f"{split}.csv", ("today_satellite_img", "old_map_img"), [(r.satellite, r.old_map) for r in rows])
            by_layout: dict[int, list] = {}
            for r in rows:
                by_layout.setdefault(r.layout, [r.satellite]).append((r.style_index, r.old_map))
            jobs += [("historic-maps", (seed, out, split_index, layout, names[0], names[1:])) for layout, names in by_layout.items()]
    elif task == "mechanical-drawing":
        (root / task / "data").mkdir(parents=True)
        for split_index, (split, ids) in enumerate(drawing_plan(scale).items()):
            _write_csv(root / task / f"{split}.csv", ("id",), [(i,) for i in ids])
            jobs += [("mechanical-drawing", (seed, out, split_index, i)) for i in ids]
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return jobs


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def _write_manifest(root: Path, manifest: dict) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(root / MANIFEST)


def is_generated(root: str | os.PathLike, seed: int = 0, scale: float = 1.0, tasks: Sequence[str] = TASKS) -> bool:
    """Whether `root` already holds these tasks, generated with this seed and scale."""
    manifest = _read_manifest(Path(root))
    return (
        manifest is not None and manifest.get("version") == GENERATOR_VERSION and manifest.get("seed") == seed
        and manifest.get("scale") == scale and set(tasks) <= set(manifest.get("tasks", []))
    )


def generate(
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    scale: float = 1.0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Renders the tasks into `root` (default: `default_root(seed, scale)`) unless already there.

    Tasks already generated with the same seed, scale and generator version are kept. A root
    generated with other settings is only replaced with `overwrite=True`; a folder that holds
    task directories without this generator's manifest is never touched.
    """
    from tqdm.auto import tqdm

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(f"tasks: unknown {unknown}; expected a subset of {list(TASKS)}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if not 0.0 < scale <= 1.0:
        raise InputError(f"scale must be in (0, 1], got {scale}")
    root = Path(root) if root is not None else default_root(seed, scale)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"version": GENERATOR_VERSION, "seed": seed, "scale": scale}
    manifest = _read_manifest(root)
    if manifest is None:
        foreign = [t for t in TASKS if (root / t).exists()]
        if foreign:
            raise FileExistsError(f"{root} already holds {foreign} but no {MANIFEST}: not a synthetic benchmark folder, refusing to write into it")
        manifest = {**settings, "tasks": []}
    elif {k: manifest.get(k) for k in settings} != settings:
        if not overwrite:
            old = {k: manifest.get(k) for k in settings}
            raise FileExistsError(f"{root} was generated with {old}, not {settings}; choose another folder or overwrite")
        manifest = {**settings, "tasks": []}
    todo = [t for t in tasks if t not in manifest["tasks"]]
    for task in todo:
        if (root / task).exists():  # a run that was interrupted; the manifest says the folder is ours
            shutil.rmtree(root / task)
        (root / f"samples_{task}.png").unlink(missing_ok=True)
    manifest["tasks"] = [t for t in manifest["tasks"] if t not in todo]
    _write_manifest(root, manifest)
    if not todo:
        return root

    jobs = [job for task in todo for job in _prepare_task(root, task, seed, scale)]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    with tqdm(total=len(jobs), desc=f"synth {'+'.join(todo)}", unit="item", mininterval=1.0, disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                _run(job)
                bar.update()
        else:
            # fork: the workers only run numpy/PIL, and re-importing the package (torch) per worker costs seconds.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                for _ in pool.map(_run, jobs, chunksize=8):
                    bar.update()
    for task in todo:
        # A 256-colour palette keeps the README figures small (the map textures are noisy).
        sample_grid(root, task).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(root / f"samples_{task}.png", optimize=True)
        manifest["tasks"].append(task)
        _write_manifest(root, manifest)
    return root


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


# Part names short enough for a thumbnail's caption.
_SHORT_PART_NAMES = {
    "555 timer IC": "555", "4017 counter IC": "4017", "LM386 amplifier IC": "LM386", "7805 regulator IC": "7805",
    "NPN transistor": "NPN", "PNP transistor": "PNP", "electrolytic capacitor": "capacitor", "light-dependent resistor": "LDR",
    "seven-segment display": "display", "bridge rectifier": "bridge", "zener diode": "zener", "quartz crystal": "crystal",
    "DC motor": "motor", "potentiometer": "pot",
}


def sample_grid(root: str | os.PathLike, task: str, *, columns: int = 4, thumb: int = 192) -> Image.Image:
    """A small captioned grid of train examples: circuits of classes that differ in one detail,
    old maps over their satellite images, drawings over their renders."""
    root = Path(root)
    if task == "circuits":
        names = dict(_read_rows(root / task / "label_map.csv"))
        first_of_label: dict[int, str] = {}
        for _, filename, label in _read_rows(root / task / "train_5_shots.csv"):
            first_of_label.setdefault(int(label), filename)
        # Pairs of sibling functions, one part apart (top row and bottom row).
        siblings = (("metronome", "tone generator"), ("alarm", "metal detector"), ("touch switch", "clap switch"),
                    ("motor driver", "fan controller"))
        labels = [CIRCUIT_CLASSES.index(name) for pair in zip(*siblings) for name in pair]
        cells = [(root / task / "data" / first_of_label[label], f"{names[str(label)]}\n{', '.join(_SHORT_PART_NAMES.get(p, p) for p in circuits.class_parts(label))}")
                 for label in labels if label in first_of_label][: 2 * columns]
    elif task == "historic-maps":
        rows = _read_rows(root / task / "train.csv")[:columns]
        folder = root / task / "Satellite"
        cells = [(folder / m, "old map") for _, m in rows] + [(folder / s, "satellite") for s, _ in rows]
    elif task == "mechanical-drawing":
        ids = [row[0] for row in _read_rows(root / task / "train.csv")][:columns]
        folder = root / task / "data"
        cells = [(folder / f"{i}-a.png", f"drawing {i}") for i in ids] + [(folder / f"{i}-b.png", f"render {i}") for i in ids]
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    caption = 28  # two lines
    columns = max(1, min(columns, (len(cells) + 1) // 2))
    rows_count = (len(cells) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (thumb + 4) + 4, rows_count * (thumb + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=11)
    for k, (path, text) in enumerate(cells):
        x, y = 4 + (k % columns) * (thumb + 4), 4 + (k // columns) * (thumb + caption + 4)
        with Image.open(path) as image:
            grid.paste(image.convert("RGB").resize((thumb, thumb), Image.Resampling.BICUBIC), (x, y))
        draw.text((x + 2, y + thumb + 2), text, fill=(0, 0, 0), font=font)
    return grid
