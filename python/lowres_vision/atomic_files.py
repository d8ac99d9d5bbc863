"""Atomic file writes, used by every command that leaves results behind: a reader, or a process killed
mid-write, sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np


def temporary_path(path: Path) -> Path:
    """A hidden sibling of `path` that no other process or thread writes (ranks may write the same file)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Writes through `write(tmp)`, syncs, then renames over `path`."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep the half-written copy
        raise


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare path
            np.savez(handle, **arrays)

    write_atomic(path, write)
