"""A process-wide, size-bounded cache of preprocessed images, for runs that read the same files again.

The demo trains 45 runs over the same few thousand images, each decoding and resizing every image
once per epoch and again for each evaluation; with the cache on, each image is decoded and resized
once. Only deterministic transforms are cached: those that carry a `cache_key` (the evaluation
transform, and the training transform without augmentation or random erasing), so a cached image
is exactly what the transform would give. Entries are keyed by the file's resolved path, inode,
size and modification and change times as well, so a file replaced or rewritten on disk is read again.

The cache is off unless enabled with `cached_images(max_bytes)`, and only the process that enables it
uses it: DataLoader workers always read the files (a worker's additions would die with the worker),
so a cached run loads in the main process (num_workers=0).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Iterator, Optional

import torch
import torch.utils.data

from .io import load_image


class ImageCache:
    """Least-recently-used tensors up to `max_bytes` in all."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes, self.bytes = max_bytes, 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Optional[torch.Tensor]:
        tensor = self._entries.get(key)
        if tensor is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return tensor

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.untyped_storage().nbytes()  # a view keeps its whole storage alive

    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        size = self._nbytes(tensor)
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = tensor
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= self._nbytes(evicted)


_active: Optional[ImageCache] = None


@contextlib.contextmanager
def cached_images(max_bytes: int) -> Iterator[ImageCache]:
    """Caches deterministic preprocessing of every image read (see `load_transformed`) in this block."""
    global _active
    previous, _active = _active, ImageCache(max_bytes)
    try:
        yield _active
    finally:
        _active = previous


def load_transformed(path: Path | str, transform: Callable) -> torch.Tensor:
    """`transform(load_image(path))`, from the active cache when the transform is deterministic."""
    cache_key = getattr(transform, "cache_key", None)
    if _active is None or cache_key is None or torch.utils.data.get_worker_info() is not None:
        return transform(load_image(path))
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return transform(load_image(path))  # load_image raises the error that names the file
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, cache_key)
    tensor = _active.get(key)
    if tensor is None:
        tensor = transform(load_image(path))
        _active.put(key, tensor)
    return tensor.clone()  # callers may modify their batch in place; the cached copy stays as read
