"""The end-to-end demo: synthetic LITE data -> the paper's configurations and zero-shot -> results table.

    from lowres_vision.demo import DemoSettings, run_demo
    results = run_demo(DemoSettings(out="runs/demo"))

Offline and on CPU it adapts the CLIP this project pretrains and ships (`SHIPPED_CHECKPOINT`, a
patch-14 ViT pretrained at 112 px on a generated general image corpus; its model card lies beside
it), at 70 px and for 3 epochs to stay within 10 minutes on 2 cores, where the paper adapts a frozen
ViT-H/14 at 224 px for 90 epochs; `pretrained=` or `checkpoint=` picks
another open_clip model. Every training configuration runs once per training seed and the table
shows mean ± standard deviation over them. Two training-free rows follow: zero-shot transfer on every
task (class prompts on circuits, the frozen image embeddings' cosine on the retrieval tasks, as in the
paper's tables) and CoRE over the shipped caption corpus on circuits. Every run validates after each epoch, so its training
curves have a point per epoch. The numbers are whatever training gives; nothing is tuned towards
the paper's.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .errors import InputError
from .synth.plan import TASKS

# The rows of the paper's Table 4 / 6 (the "combination of baselines" here is without generated data).
ADAPTER = {"kind": "adaptformer"}
CONFIGURATIONS: dict[str, dict] = {
    "Linear probe": {"linear_probe": "logreg"},  # "head" on the retrieval tasks (see configuration)
    "AdaptFormer": {"adapter": ADAPTER},
    "+ Tokenization": {"adapter": ADAPTER, "tokenization": {}},
    "+ Domain attention": {"adapter": ADAPTER, "domain_attention": {}},
    "+ All": {"adapter": ADAPTER, "tokenization": {}, "domain_attention": {}},
}


def configuration(name: str, task: str) -> dict:
    """The TrainConfig settings of configuration `name` on `task`. Logistic regression needs classes:
    on the retrieval tasks the linear probe trains the embedding head instead."""
    from .data import is_retrieval

    settings = dict(CONFIGURATIONS[name])
    if settings.get("linear_probe") == "logreg" and is_retrieval(task):
        settings["linear_probe"] = "head"
    return settings


# Training-free rows, the `zeroshot` command's two methods: "Zero-Shot Transfer" as in the paper's
# tables (circuits: class prompts; retrieval: cosine of the frozen image embeddings), on every task,
# and CoRE's caption enrichment on circuits, the task its paper evaluates.
ZERO_SHOT = {"Zero-shot transfer": "plain", "Zero-shot (CoRE)": "core"}
ZERO_SHOT_TASKS = {"Zero-shot transfer": TASKS, "Zero-shot (CoRE)": ("circuits",)}
CHANCE = "Chance"
# The shipped CLIP was trained at 112 px; the demo feeds it 70 px (a 5x5 token grid, its position
# embeddings interpolated) so that its 45 training runs fit in 10 minutes on 2 CPU cores.
SHIPPED_DEMO_IMAGE_SIZE = 70

# The columns of the paper's results tables: (task, metric key in metrics-test.json, header).
TABLE_COLUMNS = (
    ("circuits", "top1", "Circuits Top-1 (%) ↑"),
    ("circuits", "top5", "Circuits Top-5 (%) ↑"),
    ("historic-maps", "R@1", "Maps R@1 ↑"),
    ("historic-maps", "R@5", "Maps R@5 ↑"),
    ("historic-maps", "mean_rank", "Maps MnR ↓"),
    ("mechanical-drawing", "R@1", "Drawings R@1 ↑"),
    ("mechanical-drawing", "R@5", "Drawings R@5 ↑"),
    ("mechanical-drawing", "mean_rank", "Drawings MnR ↓"),
)


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    data_root: Optional[str] = None  # default: lowres_vision.synth.default_root(seed, scale)
    seed: int = 0  # of the synthetic data
    scale: float = 1.0
    tasks: Sequence[str] = TASKS
    configurations: Sequence[str] = tuple(CONFIGURATIONS)
    training_seeds: Sequence[int] = (0, 1, 2)
    zero_shot: bool = True
    epochs: int = 3
    image_size: Optional[int] = None  # default: SHIPPED_DEMO_IMAGE_SIZE, a checkpoint's own size, 224 for --pretrained
    batch_size: int = 8
    lr: float = 1e-3
    backbone: str = "ViT-B-16"
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None  # default (without pretrained): the shipped CLIP
    device: str = "auto"
    # CPU threads for torch during the demo (None: torch's default), and DataLoader worker processes of
    # every run (0: the main process loads). With the image cache every image is decoded and resized once
    # for all 45 runs, so loading in the main process and computing on both cores is fastest: on 2 cores,
    # one seed of every configuration took 185 s with 1 thread and 1 worker, 109 s with the cache,
    # 0 workers and 1 thread, and 68 s with 2 threads (identical results).
    threads: Optional[int] = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    workers: int = 0
    # Megabytes of preprocessed images kept in memory across the runs (data.cache; 0: off). The
    # synthetic benchmark at 70 px needs ~290 MB; the least recently used images go beyond the limit.
    image_cache_mb: int = 512
    plots: bool = True
    extra: dict = field(default_factory=dict)  # further TrainConfig fields

    def validate(self) -> "DemoSettings":
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise InputError(f"tasks: expected a non-empty subset of {list(TASKS)}, got {list(self.tasks)}")
        unknown = [c for c in self.configurations if c not in CONFIGURATIONS]
        if unknown:
            raise InputError(f"configurations: expected a subset of {list(CONFIGURATIONS)}, got {list(self.configurations)}")
        if not self.configurations and not self.zero_shot:
            raise InputError("configurations: nothing to run (no configurations and zero_shot off)")
        if not self.training_seeds or len(set(self.training_seeds)) != len(self.training_seeds):
            raise InputError(f"training_seeds: expected distinct seeds, got {list(self.training_seeds)}")
        if self.pretrained and self.checkpoint:
            raise InputError(f"give pretrained ({self.pretrained!r}) or checkpoint ({self.checkpoint!r}), not both")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1 or None, got {self.threads}")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0, got {self.workers}")
        if self.image_cache_mb < 0:
            raise InputError(f"image_cache_mb must be >= 0, got {self.image_cache_mb}")
        return self

    @property
    def resolved_checkpoint(self) -> Optional[str]:
        from .models.backbone import SHIPPED_CHECKPOINT

        return self.checkpoint or (None if self.pretrained else SHIPPED_CHECKPOINT)

    @property
    def resolved_image_size(self) -> int:
        from .models.backbone import SHIPPED_CHECKPOINT, checkpoint_config

        if self.image_size is not None:
            return self.image_size
        if self.resolved_checkpoint == SHIPPED_CHECKPOINT:
            return SHIPPED_DEMO_IMAGE_SIZE
        config = checkpoint_config(self.resolved_checkpoint) if self.resolved_checkpoint else None
        return config["model_cfg"]["vision_cfg"]["image_size"] if config else 224


def slug(name: str) -> str:
    """'+ Domain attention' -> 'domain-attention'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def mean_and_spread(runs: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Metric-wise mean and sample standard deviation (n - 1; 0 for a single run) over runs."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    spread = {k: statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in keys}
    return mean, spread


def chance_levels(data_root: Path, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """What guessing scores on each task's test split: top-k = k / classes, R@k = k / gallery, MnR = (gallery + 1) / 2."""
    from .data import ClassificationSplit, load_split

    levels = {}
    for task in tasks:
        split = load_split(task, data_root, "test")
        if isinstance(split, ClassificationSplit):
            n = len(split.class_names)
            levels[task] = {"top1": 100.0 / n, "top5": 100.0 * min(5, n) / n}
        else:
            n = len(split.gallery_paths)
            levels[task] = {"R@1": 100.0 / n, "R@5": 100.0 * min(5, n) / n, "mean_rank": (n + 1) / 2}
    return levels


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence[str] = TASKS,
                 spread: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]] = None) -> str:
    """A Markdown table in the paper's layout; results[configuration][task][metric], with '± spread' where given."""
    columns = [c for c in TABLE_COLUMNS if c[0] in tasks]
    lines = ["| Configuration | " + " | ".join(header for _, _, header in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, by_task in results.items():
        cells = []
        for task, key, _ in columns:
            value = by_task.get(task, {}).get(key)
            deviation = (spread or {}).get(name, {}).get(task, {}).get(key)
            cells.append("–" if value is None else f"{value:.1f}" + ("" if deviation is None else f" ± {deviation:.1f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paper_layout(table: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence[str]) -> dict:
    """table restricted to the paper's metrics and keyed by their short names, for the bar chart."""
    keep = {}
    for name, by_task in table.items():
        keep[name] = {}
        for task, key, header in TABLE_COLUMNS:
            if task in tasks and key in by_task.get(task, {}):
                keep[name].setdefault(task, {})[header.split(" ", 1)[1].rstrip(" ↑↓")] = by_task[task][key]
    return keep


def run_demo(settings: DemoSettings) -> dict:
    """Generates the data if missing, trains and evaluates every (configuration, task, training seed),
    runs zero-shot transfer on every task and CoRE on circuits, writes results.{md,json,png} and the per-run plots under settings.out;
    returns results[configuration][task][metric], the means over training seeds."""
    import torch

    settings.validate()
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run_demo(settings)
    finally:
        torch.set_num_threads(threads)


def _zero_shot(settings: DemoSettings, data_root: Path, task: str, method: str, out: Path) -> dict[str, float]:
    from .cli import main

    source = (["--checkpoint", settings.resolved_checkpoint] if settings.resolved_checkpoint
              else ["--model", settings.backbone, "--pretrained", settings.pretrained])
    device = [] if settings.device == "auto" else ["--device", settings.device]
    code = main(["zeroshot", "--task", task, "--data-root", str(data_root), "--out", str(out),
                 "--method", method, "--workers", str(settings.workers), *source, *device])
    if code != 0:
        raise RuntimeError(f"demo: zero-shot ({method}) on {task} failed with exit status {code}")
    return json.loads((out / "metrics.json").read_text())


def _run_demo(settings: DemoSettings) -> dict:
    from tqdm.auto import tqdm

    from .config import TrainConfig
    from .data import cached_images
    from .plots import plot_results, plot_run
    from .synth import default_root, generate, is_generated
    from .training import train

    out = Path(settings.out)
    data_root = Path(settings.data_root) if settings.data_root else default_root(settings.seed, settings.scale)
    checkpoint, image_size = settings.resolved_checkpoint, settings.resolved_image_size
    started = time.time()
    if not is_generated(data_root, settings.seed, settings.scale, settings.tasks):
        generate(data_root, seed=settings.seed, tasks=settings.tasks, scale=settings.scale)
    per_seed: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in settings.configurations}
    seconds: dict[str, dict[str, float]] = {name: {} for name in settings.configurations}
    runs = [(name, task, seed) for name in settings.configurations for task in settings.tasks for seed in settings.training_seeds]
    cache = cached_images(settings.image_cache_mb << 20) if settings.image_cache_mb else contextlib.nullcontext()
    with cache, tqdm(runs, desc="demo", unit="run", dynamic_ncols=True) as bar:
        for name, task, seed in bar:
            bar.set_postfix_str(f"{task} · {name} · seed {seed}")
            run_dir = out / task / slug(name) / f"seed{seed}"
            cfg = TrainConfig(
                task=task, data_root=str(data_root), backbone=settings.backbone, pretrained=settings.pretrained,
                checkpoint=checkpoint, image_size=image_size, epochs=settings.epochs, batch_size=settings.batch_size,
                lr=settings.lr, seed=seed, out=str(run_dir), device=settings.device, eval_every=1,
                overwrite=True,  # the demo's folder is its own: running it again redoes its runs
                **{"num_workers": settings.workers, **configuration(name, task), **settings.extra},
            )
            run_started = time.time()
            per_seed[name].setdefault(task, []).append(train(cfg))
            seconds[name][task] = round(seconds[name].get(task, 0.0) + time.time() - run_started, 1)
            if settings.plots:
                plot_run(run_dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    spread: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_task in per_seed.items():
        results[name], spread[name] = {}, {}
        for task, metrics in by_task.items():
            results[name][task], spread[name][task] = mean_and_spread(metrics)
    if settings.zero_shot:
        for name, method in ZERO_SHOT.items():
            for task in (t for t in settings.tasks if t in ZERO_SHOT_TASKS[name]):
                run_started = time.time()
                results.setdefault(name, {})[task] = _zero_shot(settings, data_root, task, method, out / task / slug(name))
                seconds.setdefault(name, {})[task] = round(time.time() - run_started, 1)
    chance = chance_levels(data_root, settings.tasks)
    elapsed = time.time() - started
    _write_results(settings, out, data_root, results, spread, per_seed, chance, seconds, elapsed)
    if settings.plots:
        plot_results(_paper_layout(results, settings.tasks), out / "results.png", errors=_paper_layout(spread, settings.tasks),
                     reference=_paper_layout({CHANCE: chance}, settings.tasks)[CHANCE],
                     title=f"lowres-vision demo ({_backbone_label(settings)}; mean ± std over {len(settings.training_seeds)} training seeds)")
    return results


def _backbone_label(settings: DemoSettings) -> str:
    checkpoint = settings.resolved_checkpoint
    if checkpoint is None:
        return f"{settings.backbone} ({settings.pretrained})"
    from .models.backbone import SHIPPED_CHECKPOINT

    return "the shipped CLIP" if checkpoint == SHIPPED_CHECKPOINT else f"checkpoint {checkpoint}"


def _write_results(settings, out, data_root, results, spread, per_seed, chance, seconds, elapsed) -> None:
    from .training.run_directory import write_atomic, write_json

    seeds = len(settings.training_seeds)
    table = format_table({**results, CHANCE: chance}, settings.tasks, spread)
    runs = sum(len(metrics) for by_task in per_seed.values() for metrics in by_task.values())
    header = (f"# lowres-vision demo\n\nSynthetic LITE benchmark (data seed {settings.seed}, scale {settings.scale:g}); "
              f"{_backbone_label(settings)}, frozen, at {settings.resolved_image_size} px; {settings.epochs} epochs, "
              f"batch {settings.batch_size}, Adam lr {settings.lr:g}; training configurations: mean ± sample standard "
              f"deviation over {seeds} training seed{'s' if seeds > 1 else ''} ({list(settings.training_seeds)}); "
              f"{runs} training runs and {sum(len(results[name]) for name in ZERO_SHOT if name in results)} zero-shot evaluations in "
              f"{elapsed / 60:.1f} min. {CHANCE}: what guessing scores on each test split.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.md", lambda tmp: tmp.write_text(header + table + "\n"))
    write_json(out / "results.json", {
        "settings": {**asdict(settings), "tasks": list(settings.tasks), "configurations": list(settings.configurations),
                     "training_seeds": list(settings.training_seeds), "data_root": str(data_root),
                     "checkpoint": settings.resolved_checkpoint, "image_size": settings.resolved_image_size},
        "results": results, "spread": spread, "per_seed": per_seed, "chance": chance,
        "seconds": seconds, "total_seconds": round(elapsed, 1),
    })
    print("\n" + table + f"\n\n{runs} training runs in {elapsed / 60:.1f} min; results in {out}/results.md, "
          f"plots in {out}/<task>/<configuration>/seed<k>/plots")
