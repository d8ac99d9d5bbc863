"""What a loaded split is: file paths and targets, no pixels (images are read by the datasets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClassificationSplit:
    """Images with integer labels in [0, len(class_names))."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"ClassificationSplit: {len(self.paths)} paths but {len(self.labels)} labels")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"ClassificationSplit: labels {sorted(set(bad))[:5]} outside [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class RetrievalSplit:
    """Queries, a gallery, and the gallery index of each query's match.

    Training uses the (query, matching gallery image) pairs. `symmetric` splits (one gallery image
    per query and vice versa) are also evaluated gallery -> query, each metric the mean of both.
    """

    query_paths: tuple[Path, ...]
    gallery_paths: tuple[Path, ...]
    ground_truth: tuple[int, ...]
    symmetric: bool = False

    def __post_init__(self) -> None:
        if len(self.query_paths) != len(self.ground_truth):
            raise ValueError(f"RetrievalSplit: {len(self.query_paths)} queries but {len(self.ground_truth)} ground-truth indices")
        bad = [index for index in self.ground_truth if not 0 <= index < len(self.gallery_paths)]
        if bad:
            raise ValueError(f"RetrievalSplit: ground-truth indices {sorted(set(bad))[:5]} outside the gallery of {len(self.gallery_paths)}")
        if self.symmetric and sorted(self.ground_truth) != list(range(len(self.gallery_paths))):
            raise ValueError("RetrievalSplit: a symmetric split needs exactly one query per gallery image")

    def __len__(self) -> int:
        return len(self.query_paths)

    def pairs(self) -> list[tuple[Path, Path]]:
        return [(query, self.gallery_paths[index]) for query, index in zip(self.query_paths, self.ground_truth)]


def pairs_to_retrieval_split(pairs: list[tuple[Path, Path]], *, symmetric: bool = False) -> RetrievalSplit:
    """(query, gallery image) pairs -> a split whose gallery is the unique gallery images in first-seen order."""
    gallery_index: dict[Path, int] = {}
    for _, gallery in pairs:
        gallery_index.setdefault(gallery, len(gallery_index))
    return RetrievalSplit(
        query_paths=tuple(query for query, _ in pairs),
        gallery_paths=tuple(gallery_index),
        ground_truth=tuple(gallery_index[gallery] for _, gallery in pairs),
        symmetric=symmetric,
    )
