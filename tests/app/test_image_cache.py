"""The preprocessed-image cache: a cached image is exactly what the transform gives, files rewritten on
disk are read again, random transforms are never cached, the byte limit holds, and a run reads the
same data with the cache as without it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lowres_vision.config import TrainConfig
from torch.utils.data import DataLoader

from lowres_vision.data import ImageListDataset, cached_images, eval_transform, load_image, load_transformed, train_transform
from lowres_vision.data.cache import ImageCache
from lowres_vision.models.backbone import SHIPPED_CHECKPOINT
from lowres_vision.synth import generate
from lowres_vision.training import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _image(path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)


def test_a_cached_image_is_what_the_transform_gives_and_a_private_copy(tmp_path):
    path = tmp_path / "a.png"
    _image(path, 0)
    transform = eval_transform(28)
    expected = transform(load_image(path))
    assert torch.equal(load_transformed(path, transform), expected)  # no cache active: plain read
    with cached_images(1 << 20) as cache:
        first = load_transformed(path, transform)
        first.zero_()  # a caller writing into its batch does not change what the next read gets
        again = load_transformed(path, transform)
        assert torch.equal(again, expected)
        assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
        assert torch.equal(load_transformed(path, eval_transform(20)), eval_transform(20)(load_image(path)))
        assert len(cache) == 2  # another size is another entry


def test_a_rewritten_file_is_read_again(tmp_path):
    # BMP: the same size whatever the pixels, so only the file's times tell the two versions apart.
    path = tmp_path / "a.bmp"
    _image(path, 0)
    transform = eval_transform(28)
    with cached_images(1 << 20) as cache:
        before = load_transformed(path, transform)
        size, mtime = path.stat().st_size, path.stat().st_mtime_ns
        _image(path, 1)
        os.utime(path, ns=(mtime, mtime))  # the same size and mtime: the change time still differs
        assert path.stat().st_size == size
        after = load_transformed(path, transform)
        assert cache.misses == 2
    assert not torch.equal(before, after)
    assert torch.equal(after, transform(load_image(path)))


def test_data_loader_workers_bypass_the_cache(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for i, path in enumerate(paths):
        _image(path, i)
    dataset = ImageListDataset(paths, eval_transform(28))
    with cached_images(1 << 20) as cache:
        in_workers = torch.cat(list(DataLoader(dataset, batch_size=2, num_workers=1)))
        assert len(cache) == 0  # what a worker would add dies with it, so it adds nothing
        in_main = torch.cat(list(DataLoader(dataset, batch_size=2, num_workers=0)))
        assert len(cache) == 4
    assert torch.equal(in_workers, in_main)


def test_random_transforms_are_not_cached(tmp_path):
    path = tmp_path / "a.png"
    _image(path, 0)
    assert getattr(train_transform(28), "cache_key", None) == eval_transform(28).cache_key
    with pytest.raises(AttributeError):  # a deterministic transform cannot grow a random step
        eval_transform(28).transforms.append(None)
    with cached_images(1 << 20) as cache:
        for transform in (train_transform(28, augment=True), train_transform(28, random_erasing=0.5)):
            assert getattr(transform, "cache_key", None) is None
            load_transformed(path, transform)
        assert len(cache) == 0 and cache.hits == cache.misses == 0


def test_the_byte_limit_evicts_the_least_recently_used():
    one = torch.zeros(256)  # 1 KiB
    cache = ImageCache(2048)
    cache.put("a", one)
    cache.put("b", one.clone())
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", one.clone())
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (len(cache), cache.bytes) == (2, 2048)
    cache.put("huge", torch.zeros(1024))  # larger than the whole cache: not kept, nothing evicted
    assert len(cache) == 2 and cache.get("huge") is None
    with pytest.raises(ValueError, match="max_bytes must be positive, got 0"):
        ImageCache(0)


def test_a_run_learns_the_same_with_the_cache(tmp_path):
    root = generate(tmp_path / "synth", tasks=["historic-maps"], scale=0.05, workers=1, progress=False)
    def run(name):
        cfg = TrainConfig(task="historic-maps", data_root=str(root), checkpoint=SHIPPED_CHECKPOINT, image_size=42, epochs=2,
                          adapter={"kind": "adaptformer"}, out=str(tmp_path / name), eval_every=1, seed=0)
        return train(cfg)
    plain = run("plain")
    with cached_images(64 << 20) as cache:
        cached = run("cached")
    assert cache.hits > 0
    assert cached == plain
    learned = [load_file(tmp_path / name / "trainable.safetensors") for name in ("plain", "cached")]
    assert learned[0].keys() == learned[1].keys() and all(torch.equal(learned[0][k], learned[1][k]) for k in learned[0])
