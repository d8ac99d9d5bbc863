"""LITE / ImageFolder / paired-CSV loaders, transforms and per-sample seeding.

`write_toy_lite` is also used by test_training.py and test_cli.py: a LITE-layout folder of tiny
solid-colour images in which each class (or each retrieval pair) has its own colour.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowres_vision.data import (
    CLIP_MEAN,
    CLIP_STD,
    ClassificationDataset,
    ClassificationSplit,
    DatasetFormatError,
    EpochSeededDataset,
    ImageReadError,
    PairDataset,
    eval_transform,
    load_circuits,
    load_historic_maps,
    load_image_folder,
    load_mechanical_drawing,
    load_paired_csv,
    load_split,
    train_transform,
)

CIRCUIT_LABEL_IDS = (3, 7, 10)  # not contiguous: class index = rank of the id


def _colour(index: int, count: int) -> tuple[int, int, int]:
    hue = index / max(count, 1)
    return tuple(int(255 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + shift)))) for shift in (0.0, 1 / 3, 2 / 3))


def _save(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour, dtype=np.float64) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _write_csv(path: Path, header: str | None, rows: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + rows))


def write_toy_lite(root: Path, *, shots: int = 4, eval_shots: int = 2, pairs: int = 6, seed: int = 0) -> Path:
    """Writes all three LITE tasks under `root`; the circuits train CSV has a header, val/test do not."""
    rng = np.random.default_rng(seed)
    circuits = root / "circuits"
    circuits.mkdir(parents=True, exist_ok=True)
    _write_csv(circuits / "label_map.csv", "id,name", [f"{label},class_{label}" for label in CIRCUIT_LABEL_IDS])
    row_id = 0
    for split, count in (("train", shots), ("val", eval_shots), ("test", eval_shots)):
        rows = []
        for class_index, label in enumerate(CIRCUIT_LABEL_IDS):
            for _ in range(count):
                name = f"img_{row_id}.png"
                _save(circuits / "data" / name, _colour(class_index, len(CIRCUIT_LABEL_IDS)), rng)
                rows.append(f"{row_id},{name},{label}")
                row_id += 1
        _write_csv(circuits / f"{split}_5_shots.csv", "id,filename,label" if split == "train" else None, rows)

    maps = root / "historic-maps"
    drawings = root / "mechanical-drawing"
    for split in ("train", "val", "test"):
        map_rows, drawing_ids = [], []
        for pair in range(pairs):
            colour = _colour(pair, pairs)
            satellite = f"{split}_sat_{pair // 2}.png"  # two maps share each satellite image
            _save(maps / "Satellite" / satellite, _colour(pair // 2, pairs), rng)
            _save(maps / "Satellite" / f"{split}_map_{pair}.png", _colour(pair // 2, pairs), rng)
            map_rows.append(f"{satellite},{split}_map_{pair}.png")
            item = f"{split}{pair:03d}"
            _save(drawings / "data" / f"{item}-a.png", colour, rng)
            _save(drawings / "data" / f"{item}-b.png", colour, rng)
            drawing_ids.append(f"{item},extra")
        _write_csv(maps / f"{split}.csv", "today_satellite_img,old_map_img" if split == "train" else None, map_rows)
        _write_csv(drawings / f"{split}.csv", "id,note" if split == "train" else None, drawing_ids)
    return root


def test_circuits_with_and_without_header(lite_root):
    train = load_circuits(lite_root, "train")
    test = load_circuits(lite_root, "test")
    assert train.class_names == ("class_3", "class_7", "class_10")
    assert len(train) == 12 and len(test) == 6
    assert train.labels == (0,) * 4 + (1,) * 4 + (2,) * 4
    assert test.labels == (0, 0, 1, 1, 2, 2)
    assert train.paths[0] == lite_root / "circuits" / "data" / "img_0.png"


def test_circuit_filename_without_extension_is_resolved(tmp_path):
    root = tmp_path
    (root / "circuits").mkdir()
    _write_csv(root / "circuits" / "label_map.csv", None, ["0,resistor"])
    _save(root / "circuits" / "data" / "r1.jpg", (10, 20, 30), np.random.default_rng(0))
    _write_csv(root / "circuits" / "train_5_shots.csv", None, ["0,r1,0"])
    assert load_circuits(root, "train").paths == (root / "circuits" / "data" / "r1.jpg",)


def test_historic_maps_gallery_is_unique_satellites(lite_root):
    for split in ("train", "test"):  # with and without header
        loaded = load_historic_maps(lite_root, split)
        satellite = lite_root / "historic-maps" / "Satellite"
        assert loaded.query_paths == tuple(satellite / f"{split}_map_{pair}.png" for pair in range(6))
        assert loaded.gallery_paths == tuple(satellite / f"{split}_sat_{index}.png" for index in range(3))
        assert loaded.ground_truth == (0, 0, 1, 1, 2, 2)
        assert not loaded.symmetric


def test_mechanical_drawing_pairs_are_symmetric(lite_root):
    for split in ("train", "val"):
        loaded = load_mechanical_drawing(lite_root, split)
        data = lite_root / "mechanical-drawing" / "data"
        assert loaded.query_paths == tuple(data / f"{split}{pair:03d}-a.png" for pair in range(6))
        assert loaded.gallery_paths == tuple(data / f"{split}{pair:03d}-b.png" for pair in range(6))
        assert loaded.ground_truth == tuple(range(6)) and loaded.symmetric


def test_image_folder_and_paired_csv(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _save(tmp_path / "folder" / split / name / "0.png", (1, 2, 3), rng)
    _save(tmp_path / "folder" / "train" / "dog" / "1.jpg", (1, 2, 3), rng)
    train = load_image_folder(tmp_path / "folder", "train")
    assert train.class_names == ("cat", "dog") and train.labels == (0, 1, 1)
    assert load_split("imagefolder", tmp_path / "folder", "test").labels == (0, 1)

    for name in ("q0", "q1", "g0"):
        _save(tmp_path / "pairs" / "img" / f"{name}.png", (1, 2, 3), rng)
    _write_csv(tmp_path / "pairs" / "train.csv", "query,gallery", ["img/q0.png,img/g0.png", "img/q1.png,img/g0.png"])
    pairs = load_paired_csv(tmp_path / "pairs", "train")
    assert pairs.gallery_paths == (tmp_path / "pairs" / "img" / "g0.png",) and pairs.ground_truth == (0, 0)


def test_unreadable_image_names_its_path(lite_root, tmp_path):
    split = load_circuits(lite_root, "train")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    dataset = ClassificationDataset(ClassificationSplit((split.paths[0], broken), (0, 1), split.class_names), eval_transform(56))
    assert dataset[0][0].shape == (3, 56, 56)  # the readable one still loads
    with pytest.raises(ImageReadError, match="broken.png") as caught:
        dataset[1]
    assert caught.value.path == broken and caught.value.__cause__ is not None


def test_missing_files_and_bad_rows_name_the_csv(lite_root, tmp_path):
    (tmp_path / "circuits").mkdir()
    _write_csv(tmp_path / "circuits" / "label_map.csv", None, ["0,a"])
    _write_csv(tmp_path / "circuits" / "train_5_shots.csv", None, ["0,gone.png,0"])
    with pytest.raises(DatasetFormatError, match=r"train_5_shots.csv: 1 listed image\(s\) not found: .*gone.png"):
        load_circuits(tmp_path, "train")
    _write_csv(tmp_path / "circuits" / "val_5_shots.csv", None, ["0,gone.png,0", "1,short"])
    with pytest.raises(DatasetFormatError, match="val_5_shots.csv: line 2 has 2 column"):
        load_circuits(tmp_path, "val")
    _write_csv(tmp_path / "circuits" / "test_5_shots.csv", None, ["0,gone.png,5"])
    with pytest.raises(DatasetFormatError, match="label '5' of 'gone.png'"):
        load_circuits(tmp_path, "test")
    with pytest.raises(DatasetFormatError, match="historic-maps/train.csv: split file not found"):
        load_historic_maps(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_circuits(lite_root, "training")
    with pytest.raises(ValueError, match="task must be one of"):
        load_split("circuit", lite_root, "train")


def test_eval_transform_matches_hand_computed_normalisation(tmp_path):
    path = tmp_path / "solid.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path)
    image = ClassificationDataset(ClassificationSplit((path,), (0,), ("x",)), eval_transform(56))[0][0]
    expected = torch.tensor([(value / 255 - mean) / std for value, mean, std in zip((200, 100, 50), CLIP_MEAN, CLIP_STD)])
    assert image.shape == (3, 56, 56)
    torch.testing.assert_close(image, expected.view(3, 1, 1).expand(3, 56, 56), atol=1e-6, rtol=0)


def test_epoch_seeded_dataset_is_order_independent(lite_root):
    split = load_mechanical_drawing(lite_root, "train")
    dataset = EpochSeededDataset(PairDataset(split, train_transform(56, augment=True)), seed=3)
    torch.manual_seed(0)
    random.seed(0)
    before = (torch.get_rng_state(), random.getstate())
    forward = [dataset[index][0] for index in range(3)]
    backward = [dataset[index][0] for index in reversed(range(3))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()  # global RNGs untouched
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], forward[0])  # a new epoch draws new crops


def test_a_registered_task_is_one_entry_for_config_and_loaders(tmp_path):
    """A new dataset is one `register_task` call: TrainConfig accepts it and the loaders use it."""
    from lowres_vision import data
    from lowres_vision.config import TrainConfig
    from lowres_vision.data import tasks

    calls = []
    spec = data.TaskSpec("toy-registered", retrieval=True, load=lambda root, split: calls.append((root, split)) or "loaded",
                         split_path=lambda root, split: root / f"{split}.toy", augment_prompt="a toy")
    data.register_task(spec)
    try:
        (tmp_path / "train.toy").touch()
        assert "toy-registered" in data.task_names(retrieval=True)
        assert "toy-registered" not in data.task_names(retrieval=False)
        assert data.is_retrieval("toy-registered")
        assert data.split_exists("toy-registered", tmp_path, "train") and not data.split_exists("toy-registered", tmp_path, "val")
        assert data.load_split("toy-registered", tmp_path, "train") == "loaded" and calls == [(tmp_path, "train")]
        TrainConfig(task="toy-registered", data_root=str(tmp_path)).validate()
        with pytest.raises(ValueError, match="already registered"):
            data.register_task(spec)
    finally:
        del tasks._REGISTRY["toy-registered"]
    with pytest.raises(ValueError, match="task must be one of"):
        data.is_retrieval("toy-registered")
