"""Training losses: weighted cross-entropy, symmetric contrastive retrieval loss, and the
memory-bank contrastive loss over label-breaking pairs (paper 000, Sec. 3.1, Eq. 1-2)."""

from __future__ import annotations

from collections import deque
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE = 80.0  # 1 / sigma in the paper's Eq. 1; the release's value for both contrastive losses


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_i(w_i * CE(logits_i, labels_i)); without `weights` the plain mean cross-entropy.

    The mean is over the batch, not normalised by the weights: a label-preserving replacement
    with weight 0.65 contributes 0.65 of an original image, as in the release.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"weighted_cross_entropy: expected logits [B, K] and labels [B], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return losses.mean()
    if weights.shape != losses.shape:
        raise ValueError(f"weighted_cross_entropy: weights must have shape {tuple(losses.shape)}, got {tuple(weights.shape)}")
    return (weights.to(losses.dtype) * losses).mean()


def _check_pairs(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two [B, D] feature batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """CLIP's loss for paired batches: row i of `a` matches row i of `b`, every other row is a negative.

    Features are L2-normalised; logits = logit_scale * a @ b.T; the result is the mean of the
    cross-entropies a->b (over rows) and b->a (over columns).
    """
    _check_pairs("symmetric_contrastive_loss", a, b)
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class MemoryBankContrastiveLoss(nn.Module):
    """InfoNCE over (label-breaking image, positive partner) feature pairs with a FIFO memory bank.

    For each label-breaking feature q_j of the batch (L2-normalised) the positive is its own
    partner's feature k_j; the negatives are the partners k_i (i != j) of the other pairs in the
    batch and every partner feature in the memory bank, i.e. the partners of the last
    `bank_batches` batches (detached, so no gradient flows into the past):

        loss = -mean_j log( exp(s q_j.k_j) / (sum_i exp(s q_j.k_i) + sum_m exp(s q_j.bank_m)) ),  s = logit_scale

    After each call in training mode the batch's partner features enter the bank and the oldest
    batch leaves once `bank_batches` are held. The bank is transient state, not saved in
    `state_dict`; after a resume it refills within `bank_batches` steps.
    """

    def __init__(self, dim: int, bank_batches: int = 40, logit_scale: float = LOGIT_SCALE) -> None:
        super().__init__()
        if dim <= 0 or bank_batches < 0:
            raise ValueError(f"MemoryBankContrastiveLoss: dim must be positive and bank_batches >= 0, got {dim}, {bank_batches}")
        self.dim, self.bank_batches, self.logit_scale = dim, bank_batches, logit_scale
        self.bank: deque = deque(maxlen=bank_batches)

    def forward(self, breaking: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        _check_pairs("MemoryBankContrastiveLoss", breaking, partners)
        if breaking.shape[1] != self.dim:
            raise ValueError(f"MemoryBankContrastiveLoss: features have width {breaking.shape[1]}, the loss was built for dim={self.dim}")
        queries = F.normalize(breaking, dim=-1)
        keys = F.normalize(partners, dim=-1)
        bank = [k.to(device=keys.device, dtype=keys.dtype) for k in self.bank]
        candidates = torch.cat([keys, *bank], dim=0)
        logits = self.logit_scale * queries @ candidates.t()
        loss = F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
        if self.training:
            self.bank.append(keys.detach())
        return loss

    def reset(self) -> None:
        """Empties the memory bank."""
        self.bank.clear()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bank_batches={self.bank_batches}, logit_scale={self.logit_scale}"
