"""The task registry: every dataset the package can train and evaluate on, one entry each.

A new dataset is one `register_task(TaskSpec(...))` call: the CLI's `--task` choices, the train,
eval, zero-shot and augment commands and `TrainConfig` validation all read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from .generic import load_image_folder, load_paired_csv
from .lite import load_circuits, load_historic_maps, load_mechanical_drawing
from .splits import ClassificationSplit, RetrievalSplit

Split = Union[ClassificationSplit, RetrievalSplit]


@dataclass(frozen=True)
class TaskSpec:
    """One dataset kind.

    `load(root, split)` reads a split; `split_path(root, split)` is the file or folder whose presence
    defines that split; `augment_prompt` is the diffusion prompt template of its generated images
    (`{name}` is the class name; retrieval tasks have one prompt for every image).
    """

    name: str
    retrieval: bool
    load: Callable[[Union[Path, str], str], Split]
    split_path: Callable[[Path, str], Path]
    augment_prompt: str


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"register_task: a task named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def task_names(*, retrieval: bool | None = None) -> tuple[str, ...]:
    """The registered tasks' names in registration order (only one kind when `retrieval` is given)."""
    return tuple(name for name, spec in _REGISTRY.items() if retrieval is None or spec.retrieval == retrieval)


def task_spec(task: str) -> TaskSpec:
    try:
        return _REGISTRY[task]
    except KeyError:
        raise ValueError(f"task must be one of {task_names()}, got {task!r}") from None


register_task(TaskSpec("circuits", False, load_circuits, lambda root, split: root / "circuits" / f"{split}_5_shots.csv",
                       augment_prompt="a circuit diagram of {name}"))
register_task(TaskSpec("imagefolder", False, load_image_folder, lambda root, split: root / split,
                       augment_prompt="a photo of a {name}"))
register_task(TaskSpec("historic-maps", True, load_historic_maps, lambda root, split: root / "historic-maps" / f"{split}.csv",
                       augment_prompt="a historic map"))
register_task(TaskSpec("mechanical-drawing", True, load_mechanical_drawing,
                       lambda root, split: root / "mechanical-drawing" / f"{split}.csv", augment_prompt="a mechanical drawing"))
register_task(TaskSpec("paired-csv", True, load_paired_csv, lambda root, split: root / f"{split}.csv",
                       augment_prompt="a photo"))
