"""Sharded, resumable embedding of a caption corpus into memory-mapped arrays.

The corpus's rows are cut into shards of `shard_rows` captions; rank r of W (torchrun's RANK and
WORLD_SIZE, or given explicitly for separate machines sharing the index directory) embeds shards
r, r + W, r + 2W, ... into its rows of the one `<space>.npy` per space. Each shard records the
rows it has flushed to disk in `progress/<shard>.json` after every batch, so a killed rank resumes
its shards from the last completed batch. Files several ranks may create (the embedding arrays) are
created exclusively: the first writer wins and the others use what it wrote; one too long to write
twice (the corpus) is written under a lock the others wait on.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..atomic_files import temporary_path, write_json
from ..errors import InputError

DEFAULT_SHARD_ROWS = 1_000_000
POLL_SECONDS = 2.0


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of ranks: given, else torchrun's RANK / WORLD_SIZE, else 0 of 1."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank must lie in [0, world_size), got rank {rank} of world_size {world_size}")
    return rank, world_size


def create_exclusively(path: Path, write: Callable[[Path], None]) -> bool:
    """Writes `path` through `write(temporary)` unless it exists; True if this call created it."""
    if path.exists():
        return False
    temporary = temporary_path(path)
    write(temporary)
    try:
        os.link(temporary, path)  # atomic, and fails if another rank got there first
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()


@contextmanager
def holding_lock(path: Path, what: str) -> Iterator[None]:
    """Holds an exclusive lock on `path` (waiting for `what` meanwhile); the system releases it if the holder dies."""
    with path.open("a") as lock:

        def acquired() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_until(acquired, what)
        yield


def open_embeddings(path: Path, rows: int, dim: int) -> np.ndarray:
    """The [rows, dim] float32 array at `path`, created (sparse, zero-filled) if missing, memory-mapped for writing."""
    create_exclusively(path, lambda temporary: np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(rows, dim)).flush())
    return np.load(path, mmap_mode="r+")


def shard_ranges(num_rows: int, shard_rows: int) -> list[range]:
    return [range(start, min(start + shard_rows, num_rows)) for start in range(0, num_rows, shard_rows)]


def _progress_path(directory: Path, shard: int) -> Path:
    return directory / "progress" / f"{shard:05d}.json"


def rows_done(directory: Path, shard: int) -> int:
    path = _progress_path(directory, shard)
    return json.loads(path.read_text())["rows_done"] if path.is_file() else 0


def shards_done(directory: Path, num_rows: int, shard_rows: int) -> int:
    return sum(rows_done(directory, shard) == len(rows) for shard, rows in enumerate(shard_ranges(num_rows, shard_rows)))


def embed_shards(captions: Sequence[str], directory: Path, encoders: Mapping, *, batch_size: int, shard_rows: int, rank: int, world_size: int) -> None:
    """Embeds this rank's unfinished shards with every encoder of `encoders` ({space: encoder}) into `<space>.npy`."""
    (directory / "progress").mkdir(exist_ok=True)
    shards = [(shard, rows) for shard, rows in enumerate(shard_ranges(len(captions), shard_rows)) if shard % world_size == rank]
    done = {shard: rows_done(directory, shard) for shard, _ in shards}
    arrays: dict = {}
    total = sum(len(rows) for _, rows in shards)
    with tqdm(total=total, initial=sum(done.values()), desc=f"embedding captions (rank {rank})", unit="caption") as progress:
        for shard, rows in shards:
            for start in range(rows.start + done[shard], rows.stop, batch_size):
                batch = captions[start : min(start + batch_size, rows.stop)]
                for space, encoder in encoders.items():
                    embeddings = encoder.encode(batch).detach().float().cpu().numpy()
                    if embeddings.shape[0] != len(batch):
                        raise ValueError(f"{encoder.name} returned {embeddings.shape[0]} embeddings for {len(batch)} captions")
                    if space not in arrays:
                        arrays[space] = open_embeddings(directory / f"{space}.npy", len(captions), embeddings.shape[1])
                    if embeddings.shape[1] != arrays[space].shape[1]:
                        raise ValueError(
                            f"{encoder.name} gives {embeddings.shape[1]}-d embeddings but the '{space}' space of "
                            f"{directory} holds {arrays[space].shape[1]}-d ones"
                        )
                    arrays[space][start : start + len(batch)] = embeddings
                    arrays[space].flush()
                write_json(_progress_path(directory, shard), {"rows_done": start + len(batch) - rows.start})
                progress.update(len(batch))


def wait_until(ready: Callable[[], bool], what: str) -> None:
    """Polls `ready` until it holds (the other ranks' shards, or rank 0's index)."""
    if ready():
        return
    with tqdm(desc=f"waiting for {what}", unit="poll") as progress:
        while not ready():
            time.sleep(POLL_SECONDS)
            progress.update()
