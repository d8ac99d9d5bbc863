"""Datasets: the three LITE tasks, an ImageFolder tree and a paired CSV, and their transforms.

Expected layout under the data root (that of the released LITE benchmark; CSV header rows are optional everywhere):

    circuits/label_map.csv                      id,name            (class index = rank of id)
    circuits/{train,val,test}_5_shots.csv       id,filename,label  (label = an id of label_map)
    circuits/data/<filename>                    png / jpeg / jpg
    historic-maps/{train,val,test}.csv          today_satellite_img,old_map_img
    historic-maps/Satellite/<image>             both kinds; several maps may share a satellite image
    mechanical-drawing/{train,val,test}.csv     id in column 0
    mechanical-drawing/data/{id}-a.png          drawing; {id}-b.png is its 3D render

Generic tasks:

    imagefolder:  <root>/{train,val,test}/<class name>/<image>
    paired-csv:   <root>/{train,val,test}.csv rows query,gallery (paths relative to <root>)

Retrieval evaluation: historic maps query the split's unique satellite images with each old map;
mechanical drawings are evaluated a->b and b->a and each metric averaged; a paired CSV like the maps.
A missing or malformed file raises `DatasetFormatError` and an undecodable image `ImageReadError`,
both naming the path (`error.path`).
"""

from __future__ import annotations

from pathlib import Path

from .cache import cached_images, load_transformed
from .datasets import ClassificationDataset, EpochSeededDataset, ImageListDataset, PairDataset, seeded_rngs
from .generic import load_image_folder, load_paired_csv
from .io import DatasetFormatError, ImageReadError, load_image
from .lite import load_circuits, load_historic_maps, load_mechanical_drawing
from .splits import ClassificationSplit, RetrievalSplit
from .tasks import TaskSpec, register_task, task_names, task_spec
from .transforms import CLIP_MEAN, CLIP_STD, batch_mixing, eval_transform, train_transform

CLASSIFICATION_TASKS = task_names(retrieval=False)
RETRIEVAL_TASKS = task_names(retrieval=True)
TASKS = task_names()


def is_retrieval(task: str) -> bool:
    return task_spec(task).retrieval


def split_exists(task: str, root: Path | str, split: str) -> bool:
    """Whether `root` has the file (or folder) that defines split `split` of `task`."""
    return task_spec(task).split_path(Path(root), split).exists()


def load_split(task: str, root: Path | str, split: str) -> ClassificationSplit | RetrievalSplit:
    """Loads split `split` ("train", "val", "test") of `task` from `root`."""
    return task_spec(task).load(root, split)


__all__ = [
    "CLASSIFICATION_TASKS", "CLIP_MEAN", "CLIP_STD", "ClassificationDataset", "ClassificationSplit", "DatasetFormatError",
    "EpochSeededDataset", "ImageListDataset", "ImageReadError", "PairDataset", "RETRIEVAL_TASKS", "RetrievalSplit",
    "TASKS", "TaskSpec", "batch_mixing", "cached_images", "eval_transform", "is_retrieval", "load_circuits", "load_historic_maps", "load_image", "load_image_folder",
    "load_mechanical_drawing", "load_paired_csv", "load_split", "load_transformed", "register_task", "seeded_rngs", "split_exists", "task_names", "task_spec", "train_transform",
]
