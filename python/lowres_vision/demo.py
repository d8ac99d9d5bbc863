"""The end-to-end demo: synthetic LITE data -> the paper's baseline configurations -> results table.

    from lowres_vision.demo import DemoSettings, run_demo
    results = run_demo(DemoSettings(out="runs/demo"))

Offline and on CPU it uses the tiny random-initialised open_clip ViT at 112 px (the paper uses a
frozen pretrained ViT-H/14 at 224 px): a run of all five configurations on all three tasks takes a
few minutes on 2 cores. With `pretrained=` or `checkpoint=` it builds the named open_clip model
instead. The numbers are whatever training gives; nothing is tuned towards the paper's. With the
random-init tiny ViT they are at chance level: a frozen random ViT's class token is almost the same
for every image, so the offline demo shows the pipeline end to end, not the baselines' gains.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .errors import InputError
from .synth.plan import TASKS

# Paper 000, Table 4 / 6 rows (the "combination of baselines" here is without generated data).
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


# The columns of the paper's results tables: (task, metric key in metrics-test.json, header, decimals).
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
    seed: int = 0
    scale: float = 1.0
    tasks: Sequence[str] = TASKS
    configurations: Sequence[str] = tuple(CONFIGURATIONS)
    epochs: int = 8
    image_size: int = 112
    batch_size: int = 8
    lr: float = 1e-3
    backbone: str = "ViT-B-16"
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None
    device: str = "auto"
    # CPU threads for torch during the demo (None: torch's default). At the tiny model's size,
    # intra-op parallelism gains little and, on a shared or oversubscribed machine, its thread
    # synchronisation makes each small op (image normalisation included) many times slower.
    threads: Optional[int] = 1
    plots: bool = True
    extra: dict = field(default_factory=dict)  # further TrainConfig fields

    def validate(self) -> "DemoSettings":
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise InputError(f"tasks: expected a non-empty subset of {list(TASKS)}, got {list(self.tasks)}")
        unknown = [c for c in self.configurations if c not in CONFIGURATIONS]
        if unknown or not self.configurations:
            raise InputError(f"configurations: expected a non-empty subset of {list(CONFIGURATIONS)}, got {list(self.configurations)}")
        if self.pretrained and self.checkpoint:
            raise InputError(f"give pretrained ({self.pretrained!r}) or checkpoint ({self.checkpoint!r}), not both")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1 or None, got {self.threads}")
        return self

    @property
    def tiny(self) -> bool:
        return self.pretrained is None and self.checkpoint is None


def slug(name: str) -> str:
    """'+ Domain attention' -> 'domain-attention'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence[str] = TASKS) -> str:
    """A Markdown table in the paper's layout; results[configuration][task][metric]."""
    columns = [c for c in TABLE_COLUMNS if c[0] in tasks]
    lines = ["| Configuration | " + " | ".join(header for _, _, header in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, by_task in results.items():
        cells = []
        for task, key, _ in columns:
            value = by_task.get(task, {}).get(key)
            cells.append("–" if value is None else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paper_layout(results: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence[str]) -> dict:
    """results restricted to the table's metrics, for the bar chart."""
    keep = {}
    for name, by_task in results.items():
        keep[name] = {}
        for task, key, header in TABLE_COLUMNS:
            if task in tasks and key in by_task.get(task, {}):
                keep[name].setdefault(task, {})[header.split(" ", 1)[1].rstrip(" ↑↓")] = by_task[task][key]
    return keep


def run_demo(settings: DemoSettings) -> dict:
    """Generates the data if missing, trains and evaluates every (configuration, task), writes
    results.{md,json,png} and the per-run plots under settings.out; returns the results."""
    import torch

    settings.validate()
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run_demo(settings)
    finally:
        torch.set_num_threads(threads)


def _run_demo(settings: DemoSettings) -> dict:
    from tqdm.auto import tqdm

    from .config import TrainConfig
    from .plots import plot_results, plot_run
    from .synth import default_root, generate, is_generated
    from .training import train

    out = Path(settings.out)
    data_root = Path(settings.data_root) if settings.data_root else default_root(settings.seed, settings.scale)
    started = time.time()
    if not is_generated(data_root, settings.seed, settings.scale, settings.tasks):
        generate(data_root, seed=settings.seed, tasks=settings.tasks, scale=settings.scale)
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in settings.configurations}
    seconds: dict[str, dict[str, float]] = {name: {} for name in settings.configurations}
    runs = [(name, task) for name in settings.configurations for task in settings.tasks]
    with tqdm(runs, desc="demo", unit="run", dynamic_ncols=True) as bar:
        for name, task in bar:
            bar.set_postfix_str(f"{task} · {name}")
            run_dir = out / task / slug(name)
            cfg = TrainConfig(
                task=task, data_root=str(data_root), backbone=settings.backbone, pretrained=settings.pretrained,
                checkpoint=settings.checkpoint, tiny=settings.tiny, image_size=settings.image_size,
                epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                out=str(run_dir), device=settings.device, eval_every=settings.epochs,
                overwrite=True,  # the demo's folder is its own: running it again redoes its runs
                **configuration(name, task), **settings.extra,
            )
            run_started = time.time()
            results[name][task] = train(cfg)
            seconds[name][task] = round(time.time() - run_started, 1)
            if settings.plots:
                plot_run(run_dir)
    elapsed = time.time() - started

    table = format_table(results, settings.tasks)
    backbone = (f"tiny random-init open_clip ViT (patch 14, width 64, 4 blocks) at {settings.image_size} px"
                if settings.tiny else f"{settings.backbone} ({settings.pretrained or settings.checkpoint}) at {settings.image_size} px")
    header = (f"# lowres-vision demo\n\nSynthetic LITE benchmark (seed {settings.seed}, scale {settings.scale:g}), "
              f"{backbone}, {settings.epochs} epochs, batch {settings.batch_size}, Adam lr {settings.lr:g}; "
              f"{len(runs)} runs in {elapsed / 60:.1f} min.\n\n")
    if settings.tiny:
        header += ("The backbone is randomly initialised and frozen: its class token barely depends on the image, so "
                   "expect chance-level numbers. This run shows the pipeline end to end; give --pretrained or "
                   "--checkpoint for a real foundation model.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(header + table + "\n")
    (out / "results.json").write_text(json.dumps({
        "settings": {**asdict(settings), "tasks": list(settings.tasks), "configurations": list(settings.configurations),
                     "data_root": str(data_root)},
        "results": results, "seconds": seconds, "total_seconds": round(elapsed, 1),
    }, indent=2) + "\n")
    if settings.plots:
        plot_results(_paper_layout(results, settings.tasks), out / "results.png",
                     title=f"lowres-vision demo ({'tiny random-init ViT' if settings.tiny else settings.backbone})")
    print("\n" + table + f"\n\n{len(runs)} runs in {elapsed / 60:.1f} min; results in {out}/results.md, plots in {out}/<task>/<configuration>/plots")
    return results
