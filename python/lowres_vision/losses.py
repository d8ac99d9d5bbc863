"""Training losses: weighted cross-entropy, symmetric contrastive retrieval loss, and the
memory-bank contrastive loss over label-breaking pairs (the LITE paper, "Low-Resource Vision
Challenges for Foundation Models", CVPR 2024, Sec. 3.1, Eq. 1-2)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE = 80.0  # 1 / sigma in the paper's Eq. 1; the release's value for both contrastive losses


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_i(w_i * CE(logits_i, labels_i)) / sum_i(w_i); without `weights` the plain mean cross-entropy.

    `labels` are class indices [B] or soft targets [B, K] (MixUp/CutMix: CE_i = -sum_k y_ik log softmax(logits_i)_k).

    A label-preserving image standing in for an original (weight 0.65) counts 0.65 of an original,
    relative to the rest of its batch. This is the normalisation of the authors' release
    (repository xiaobai1217/Low-Resource-Vision) in scripts/train_map.py; its scripts/train_circuit.py
    writes the same expression around an already mean-reduced loss, where the weights cancel out.
    """
    if logits.dim() != 2 or labels.shape not in (logits.shape[:1], logits.shape):
        raise ValueError(f"weighted_cross_entropy: expected logits [B, K] and labels [B] or soft targets [B, K], "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return losses.mean()
    if weights.shape != losses.shape:
        raise ValueError(f"weighted_cross_entropy: weights must have shape {tuple(losses.shape)}, got {tuple(weights.shape)}")
    weights = weights.to(losses.dtype)
    return (weights * losses).sum() / weights.sum()


def _check_pairs(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two [B, D] feature batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: float = LOGIT_SCALE,
                               weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's loss for paired batches: row i of `a` matches row i of `b`, every other row is a negative.

    Features are L2-normalised; logits = logit_scale * a @ b.T; the result is the mean of the
    cross-entropies a->b (over rows) and b->a (over columns), each weighted by pair i's weight as
    `weighted_cross_entropy` does (a pair with a label-preserving image in it weighs `replaced_weight`).
    """
    _check_pairs("symmetric_contrastive_loss", a, b)
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (weighted_cross_entropy(logits, targets, weights) + weighted_cross_entropy(logits.t(), targets, weights))


class MemoryBankContrastiveLoss(nn.Module):
    """The label-breaking loss of the LITE paper (Eq. 1) with a FIFO memory bank of features.

    Each label-breaking image x_j comes with a positive partner x'_j (x_j re-augmented at the
    label-preserving strength). With all features L2-normalised, the QUERY is the partner x'_j; its
    positive is its own label-breaking feature x_j; the negatives are the other label-breaking
    features of the batch and the bank's label-breaking features of past batches (detached):

        loss = -mean_j log( exp(s x'_j.x_j) / (sum_i exp(s x'_j.x_i) + sum_m exp(s x'_j.bank_m)) ),  s = logit_scale

    as the authors' release computes it (repository xiaobai1217/Low-Resource-Vision, file
    scripts/train_circuit.py). After each call in training mode the batch's label-breaking features
    enter the bank and the oldest leave once `bank_size` FEATURES are held. `bank_size` defaults to the
    paper's N = 100; the release keeps 40 batches of 4, i.e. `bank_size=160`. The bank is not in
    `state_dict`: the training checkpoint saves it (see `lowres_vision.training.run_directory`).
    """

    def __init__(self, dim: int, bank_size: int = 100, logit_scale: float = LOGIT_SCALE) -> None:
        super().__init__()
        if dim <= 0 or bank_size < 0:
            raise ValueError(f"MemoryBankContrastiveLoss: dim must be positive and bank_size >= 0, got {dim}, {bank_size}")
        self.dim, self.bank_size, self.logit_scale = dim, bank_size, logit_scale
        self.bank = torch.zeros(0, dim)  # [held, dim], oldest first

    def forward(self, breaking: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        _check_pairs("MemoryBankContrastiveLoss", breaking, partners)
        if breaking.shape[1] != self.dim:
            raise ValueError(f"MemoryBankContrastiveLoss: features have width {breaking.shape[1]}, the loss was built for dim={self.dim}")
        keys = F.normalize(breaking, dim=-1)
        queries = F.normalize(partners, dim=-1)
        candidates = torch.cat([keys, self.bank.to(device=keys.device, dtype=keys.dtype)], dim=0)
        logits = self.logit_scale * queries @ candidates.t()
        loss = F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
        if self.training:  # [bank, this batch], oldest first; the newest bank_size stay
            self.bank = candidates.detach().roll(-len(keys), dims=0)[max(0, len(candidates) - self.bank_size):]
        return loss

    def load_bank(self, bank: torch.Tensor) -> None:
        """Restores a bank saved from `.bank` (an exact resume)."""
        if bank.dim() != 2 or bank.shape[1] != self.dim or len(bank) > self.bank_size:
            raise ValueError(f"MemoryBankContrastiveLoss: a saved bank must be [<= {self.bank_size}, {self.dim}], got {tuple(bank.shape)}")
        self.bank = bank.detach()

    def reset(self) -> None:
        """Empties the memory bank."""
        self.bank = torch.zeros(0, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bank_size={self.bank_size}, logit_scale={self.logit_scale}"
