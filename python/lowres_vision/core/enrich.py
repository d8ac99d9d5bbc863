"""CoRE (paper 001): training-free zero-shot classification enriched by caption retrieval.

    W    zero-shot class weights: VLM text embeddings of the class prompts
    W_T  per class, the softmax(S/τ_t2t)-weighted sum of the VLM embeddings of the captions retrieved
         for the class prompt by the text-to-text encoder (Eq. 4)
    z    query image embedding;  z_T  the softmax(S/τ_i2t)-weighted sum of the VLM embeddings of
         the captions retrieved for z in the VLM space (Eq. 6)

Two readings of the mixing, chosen by `formula`:

    "paper"    W⁺ = α·W_T + (1−α)·W,               z⁺ = β·z_T + (1−β)·z           (Eqs. 5, 7)
    "release"  W⁺ = norm(α·norm(W_T) + (1−α)·W),   z⁺ = norm(β·z_T + (1−β)·z)     (SPEC §5)

and the prediction is argmax z⁺·W⁺ᵀ (Eq. 3). "release" is the default: its class weights all have
unit norm, so no class wins through the norm of its retrieved mixture alone. The temperature
divides the cosine scores, as Eqs. 4 and 6 write: τ_i2t = 100 flattens the image branch's weights
towards a plain mean of its k captions, τ_t2t = 1 keeps the text branch peaked on the best ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .encoders import TextEncoder, encode_queries
from .index import DUPLICATE_COSINE, TEXT_SPACE, VLM_SPACE, CaptionIndex, Retrieved
from .prompts import fill_templates

FORMULAS = ("release", "paper")
TUNING_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))


def zero_shot_weights(encoder: TextEncoder, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[classes, dim] unit class weights: per class the normalised mean of its template embeddings."""
    if not class_names:
        raise ValueError("zero_shot_weights: class_names is empty")
    prompts = fill_templates(templates, class_names)
    per_template = torch.stack([encoder.encode(batch) for batch in prompts])
    return F.normalize(per_template.mean(0), dim=-1)


def weighted_caption_embedding(retrieved: Retrieved, caption_embeddings: np.ndarray, temperature: float) -> torch.Tensor:
    """Σ_i softmax(s/τ)_i · e_i over each query's kept captions -> [queries, dim] (zeros where none were kept)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores = torch.from_numpy(retrieved.scores.astype(np.float32)) / temperature
    mask = torch.from_numpy(retrieved.mask)
    weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=-1).nan_to_num(0.0)
    rows = np.where(retrieved.mask, retrieved.ids, 0)
    vectors = torch.from_numpy(np.asarray(caption_embeddings[rows.ravel()], dtype=np.float32)).reshape(*rows.shape, -1)
    return torch.einsum("qk,qkd->qd", weights, vectors)


def _check_mix(name: str, weight: float, formula: str, base: torch.Tensor, retrieved: torch.Tensor) -> None:
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {weight}")
    if base.shape != retrieved.shape:
        raise ValueError(f"{name} mixing needs equal shapes, got {tuple(base.shape)} and {tuple(retrieved.shape)} (retrieved)")


def enrich_class_weights(weights: torch.Tensor, retrieved: torch.Tensor, alpha: float, formula: str = "release") -> torch.Tensor:
    """W⁺ from W [classes, dim] and W_T [classes, dim] (see the module docstring)."""
    _check_mix("alpha", alpha, formula, weights, retrieved)
    if formula == "paper":
        return alpha * retrieved + (1 - alpha) * weights
    return F.normalize(alpha * F.normalize(retrieved, dim=-1) + (1 - alpha) * weights, dim=-1)


def enrich_queries(queries: torch.Tensor, retrieved: torch.Tensor, beta: float, formula: str = "release") -> torch.Tensor:
    """z⁺ from z [queries, dim] and z_T [queries, dim] (see the module docstring)."""
    _check_mix("beta", beta, formula, queries, retrieved)
    mixed = beta * retrieved + (1 - beta) * queries
    return mixed if formula == "paper" else F.normalize(mixed, dim=-1)


@dataclass
class CoREConfig:
    k: int = 10
    alpha: float = 0.2
    beta: float = 0.5
    image_temperature: float = 100.0  # τ_i2t
    text_temperature: float = 1.0  # τ_t2t
    duplicate_threshold: float | None = DUPLICATE_COSINE
    formula: str = "release"
    query_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {self.formula!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        for name in ("alpha", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("image_temperature", "text_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class EnrichedClasses:
    weights: torch.Tensor  # W [classes, dim]
    retrieved_weights: torch.Tensor  # W_T [classes, dim]
    retrieved: Retrieved  # the captions behind W_T, per class


@dataclass
class EnrichedQueries:
    embeddings: torch.Tensor  # z [queries, dim]
    retrieved_embeddings: torch.Tensor  # z_T [queries, dim]
    retrieved: Retrieved = field(repr=False)  # the captions behind z_T, per query


class CoRE:
    """The retrieval branches of CoRE over one caption index; mixing is left to `logits`.

    `vlm_encoder` embeds the zero-shot prompts (it must be the encoder the index's "vlm" space was
    built with), `text_encoder` embeds the retrieval prompts (that of the "text" space).
    """

    def __init__(self, index: CaptionIndex, vlm_encoder: TextEncoder, text_encoder: TextEncoder, config: CoREConfig | None = None) -> None:
        for space, encoder in ((VLM_SPACE, vlm_encoder), (TEXT_SPACE, text_encoder)):
            built_with = index.meta["encoders"][space]
            if built_with != encoder.name:
                raise ValueError(f"the '{space}' space of {index.directory} was built with {built_with}, not {encoder.name}")
        self.index, self.vlm_encoder, self.text_encoder = index, vlm_encoder, text_encoder
        self.config = config or CoREConfig()

    def classes(self, class_names: Sequence[str], templates: Sequence[str], retrieval_template: str) -> EnrichedClasses:
        weights = zero_shot_weights(self.vlm_encoder, class_names, templates)
        prompts = fill_templates([retrieval_template], class_names)[0]
        retrieved = self.index.retrieve(
            TEXT_SPACE, encode_queries(self.text_encoder, prompts), self.config.k, duplicate_threshold=self.config.duplicate_threshold
        )
        retrieved_weights = weighted_caption_embedding(retrieved, self.index.embeddings(VLM_SPACE), self.config.text_temperature)
        return EnrichedClasses(weights, retrieved_weights, retrieved)

    def queries(self, image_embeddings: torch.Tensor) -> EnrichedQueries:
        """Image->text retrieval for unit image embeddings [n, dim] of the VLM, in batches."""
        parts = []
        starts = range(0, image_embeddings.shape[0], self.config.query_batch_size)
        for start in tqdm(starts, desc="image->text retrieval", unit="batch", disable=len(starts) < 2):
            batch = image_embeddings[start : start + self.config.query_batch_size]
            parts.append(
                self.index.retrieve(VLM_SPACE, batch, self.config.k, duplicate_threshold=self.config.duplicate_threshold)
            )
        retrieved = Retrieved(*(np.concatenate([getattr(part, name) for part in parts]) for name in ("ids", "scores", "mask")))
        retrieved_embeddings = weighted_caption_embedding(retrieved, self.index.embeddings(VLM_SPACE), self.config.image_temperature)
        return EnrichedQueries(image_embeddings.float().cpu(), retrieved_embeddings, retrieved)

    def logits(self, classes: EnrichedClasses, queries: EnrichedQueries, *, alpha: float | None = None, beta: float | None = None) -> torch.Tensor:
        """z⁺·W⁺ᵀ [queries, classes] with the config's α, β unless given."""
        alpha = self.config.alpha if alpha is None else alpha
        beta = self.config.beta if beta is None else beta
        return enriched_logits(classes, queries, alpha, beta, self.config.formula)


def enriched_logits(classes: EnrichedClasses, queries: EnrichedQueries, alpha: float, beta: float, formula: str = "release") -> torch.Tensor:
    class_weights = enrich_class_weights(classes.weights, classes.retrieved_weights, alpha, formula)
    query_embeddings = enrich_queries(queries.embeddings, queries.retrieved_embeddings, beta, formula)
    return query_embeddings @ class_weights.T


@dataclass
class TuningResult:
    alpha: float
    beta: float
    top1: float  # percent, on the tuning split
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    accuracy: np.ndarray  # [len(alphas), len(betas)] top-1 in percent


def tune_alpha_beta(
    classes: EnrichedClasses,
    queries: EnrichedQueries,
    labels: Sequence[int] | torch.Tensor,
    *,
    alphas: Sequence[float] = TUNING_GRID,
    betas: Sequence[float] = TUNING_GRID,
    formula: str = "release",
) -> TuningResult:
    """Grid search of top-1 accuracy over α × β (the release tunes both over 0.1…1.0 on the training split).

    Ties go to the smallest α, then the smallest β: the least retrieval that reaches the best accuracy.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (queries.embeddings.shape[0],):
        raise ValueError(f"tune_alpha_beta: labels of shape {tuple(labels.shape)} for {queries.embeddings.shape[0]} queries")
    accuracy = np.zeros((len(alphas), len(betas)))
    for i, alpha in enumerate(alphas):
        for j, beta in enumerate(betas):
            predictions = enriched_logits(classes, queries, alpha, beta, formula).argmax(-1)
            accuracy[i, j] = 100.0 * (predictions == labels).float().mean().item()
    best_alpha, best_beta = np.unravel_index(np.argmax(accuracy), accuracy.shape)
    return TuningResult(
        alpha=float(alphas[best_alpha]), beta=float(betas[best_beta]), top1=float(accuracy[best_alpha, best_beta]),
        alphas=tuple(alphas), betas=tuple(betas), accuracy=accuracy,
    )
