"""The on-disk image cache and the manifest that lists what it holds.

Layout of an augmentation directory:

    images/<key[:2]>/<key>.png     one generated image; `key` hashes everything that determines it
    manifest.jsonl                 one JSON object per image (the merged manifest)
    manifest.rank<r>.jsonl         the shard written by rank r of a multi-process run

Crash safety rests on two orderings: an image is written to a temporary file and renamed into
place, and its manifest line is appended only after the rename. A run killed at any point leaves
at most a torn last manifest line and images without a line; `Manifest.open` drops the former and
the generator re-adopts the latter (its key is known) without generating them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from PIL import Image

from ..atomic_files import write_atomic, write_text

KINDS = ("preserving", "breaking", "partner", "genie")
MANIFEST = "manifest.jsonl"
Item = TypeVar("Item")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(**fields) -> str:
    """A stable hash of the fields that determine an image (source hash, mode, strength, prompt, seed, model, ...)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def derive_seed(*parts) -> int:
    """A 63-bit seed from any hashable description, stable across processes and Python versions."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_relpath(key: str) -> str:
    return f"images/{key[:2]}/{key}.png"


def is_valid_image(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # any decoder error means the file is unusable; it is regenerated
        return False
    return True


def write_image_atomic(image: Image.Image, path: Path) -> None:
    """Writes `image` as PNG so that `path` is either absent or complete, never partial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda temporary: image.save(temporary, format="PNG"))


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Rank `rank` of `world_size` takes items i with i % world_size == rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])


def shard_manifest_name(rank: int, world_size: int) -> str:
    return MANIFEST if world_size == 1 else f"manifest.rank{rank}.jsonl"


def _parse_lines(lines: Iterable[str]) -> list[dict]:
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "key" in entry and "path" in entry:
            entries.append(entry)
    return entries


def read_manifest(path: Path | str) -> list[dict]:
    """The entries of a manifest file; a torn (unparsable) line, as a crash leaves it, is skipped."""
    with open(path, encoding="utf-8") as file:
        return _parse_lines(file)


class Manifest:
    """An append-only JSONL manifest of images under `root`, validated when opened.

    Opening drops torn lines, duplicate keys and entries whose image is missing or unreadable, and
    rewrites the file atomically if anything was dropped; appends are flushed and fsynced one by one.
    """

    def __init__(self, path: Path, entries: dict[str, dict]) -> None:
        self.path, self.entries = path, entries

    @classmethod
    def open(cls, path: Path | str) -> "Manifest":
        path = Path(path)
        root = path.parent
        entries: dict[str, dict] = {}
        lines: list[str] = []
        if path.exists():
            with open(path, encoding="utf-8") as file:
                lines = file.readlines()
            for entry in _parse_lines(lines):
                if entry["key"] not in entries and is_valid_image(root / entry["path"]):
                    entries[entry["key"]] = entry
        if len(entries) != len(lines):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, "".join(json.dumps(entry) + "\n" for entry in entries.values()))
        return cls(path, entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: dict) -> None:
        if entry["key"] in self.entries:
            return
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.entries[entry["key"]] = entry


def link_partners(entries: Iterable[dict]) -> list[dict]:
    """Entries in a canonical order, each label-breaking entry given the key of its partner.

    A partner is generated from its label-breaking image's file, so only the partner knows the
    link when it is written (`partner_of`); the merged manifest records it in both directions.
    """
    entries = [dict(entry) for entry in entries]
    partner_of = {entry["partner_of"]: entry["key"] for entry in entries if entry.get("partner_of")}
    for entry in entries:
        if entry["kind"] == "breaking":
            entry["partner"] = partner_of.get(entry["key"])
    kind_order = {kind: index for index, kind in enumerate(KINDS)}
    entries.sort(key=lambda entry: (entry["source"], kind_order[entry["kind"]], entry["index"], entry["key"]))
    return entries


def merge_manifests(root: Path | str) -> Path:
    """Merges `manifest.jsonl` and every `manifest.rank*.jsonl` under `root` into `manifest.jsonl`."""
    root = Path(root)
    sources = [root / MANIFEST, *sorted(root.glob("manifest.rank*.jsonl"))]
    entries: dict[str, dict] = {}
    for path in sources:
        if path.exists():
            entries.update(Manifest.open(path).entries)
    write_text(root / MANIFEST, "".join(json.dumps(entry) + "\n" for entry in link_partners(entries.values())))
    return root / MANIFEST
