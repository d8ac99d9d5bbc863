"""CoRE: training-free zero-shot classification enriched by caption retrieval.

"Retrieval-enriched zero-shot image classification in low-resource domains" (Dall'Asen et al.,
arXiv:2411.00988) and the authors' release (repository Fodark/CoRE).

    W    zero-shot class weights: VLM text embeddings of the class prompts
    e    the VLM text embeddings of the captions retrieved for a query, with cosine scores s
    W_T  per class, the captions retrieved for the class prompt by the text-to-text encoder, mixed
    z    query image embedding;  z_T  the captions retrieved for z in the VLM space, mixed

Two readings, chosen by `formula`:

    "release"  W_T = norm(Σ softmax(s/τ_t2t)·e), τ_t2t = 0.01     (core_zeroshot_from_retrieved.py, core.py)
               W⁺  = norm(α·W_T + (1−α)·W)
               z_T = norm(Σ s_i·e_i), the raw cosine scores as weights   (data/retrieval_dataset.py)
               z⁺  = norm((1−β)·z + β·z_T)
    "paper"    W_T = Σ softmax(s/τ_t2t)·e, τ_t2t = 1;   W⁺ = α·W_T + (1−α)·W              (Eqs. 4, 5)
               z_T = Σ softmax(s/τ_i2t)·e, τ_i2t = 100; z⁺ = β·z_T + (1−β)·z              (Eqs. 6, 7)

and the prediction is argmax z⁺·W⁺ᵀ (Eq. 3). "release" is the default. The temperature divides
the cosine scores: τ = 100 flattens the weights towards a plain mean of the k captions, τ = 0.01
puts nearly all the weight on the best one. In the release the image branch's weights are the
scores themselves (its temperature multiplies them and cancels in the normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from .encoders import TextEncoder, encode_queries
from .index import DUPLICATE_COSINE, TEXT_SPACE, VLM_SPACE, CaptionIndex, Retrieved
from .prompts import fill_templates

FORMULAS = ("release", "paper")
TUNING_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))
# (τ_t2t, τ_i2t) per formula; None: the raw cosine scores weigh the captions.
DEFAULT_TEMPERATURES = {"release": (0.01, None), "paper": (1.0, 100.0)}


def zero_shot_weights(encoder: TextEncoder, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[classes, dim] unit class weights: per class the normalised mean of its template embeddings."""
    if not class_names:
        raise ValueError("zero_shot_weights: class_names is empty")
    prompts = fill_templates(templates, class_names)
    per_template = torch.stack([encoder.encode(batch) for batch in prompts])
    return F.normalize(per_template.mean(0), dim=-1)


def weighted_caption_embedding(retrieved: Retrieved, caption_embeddings: np.ndarray, temperature: float | None) -> torch.Tensor:
    """Σ_i w_i · e_i over each query's kept captions -> [queries, dim] (zeros where none were kept).

    w = softmax(s/τ) with a temperature τ; with `temperature=None` the cosine scores s themselves.
    """
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = torch.from_numpy(retrieved.mask)
    scores = torch.from_numpy(retrieved.scores.astype(np.float32)).masked_fill(~mask, 0.0 if temperature is None else -torch.inf)
    weights = scores if temperature is None else torch.softmax(scores / temperature, dim=-1).nan_to_num(0.0)
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
    if formula == "paper":
        return beta * retrieved + (1 - beta) * queries
    return F.normalize((1 - beta) * queries + beta * F.normalize(retrieved, dim=-1), dim=-1)


@dataclass
class CoREConfig:
    k: int = 10
    alpha: float = 0.2
    beta: float = 0.5
    image_temperature: float | None = None  # τ_i2t, "paper" only; None: the formula's (DEFAULT_TEMPERATURES)
    text_temperature: float | None = None  # τ_t2t; None: the formula's
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
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.formula == "release" and self.image_temperature is not None:
            raise InputError(
                "image_temperature applies to formula='paper' only: the release weighs the image branch's captions "
                "by their raw cosine scores"
            )

    @property
    def text_tau(self) -> float:
        """τ_t2t in use: the one set, else the formula's."""
        return DEFAULT_TEMPERATURES[self.formula][0] if self.text_temperature is None else self.text_temperature

    @property
    def image_tau(self) -> float | None:
        """τ_i2t in use (None: raw cosine scores as weights, the release)."""
        return DEFAULT_TEMPERATURES[self.formula][1] if self.image_temperature is None else self.image_temperature


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
        retrieved_weights = weighted_caption_embedding(retrieved, self.index.embeddings(VLM_SPACE), self.config.text_tau)
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
        retrieved_embeddings = weighted_caption_embedding(retrieved, self.index.embeddings(VLM_SPACE), self.config.image_tau)
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
