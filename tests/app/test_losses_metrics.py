"""Losses and metrics against values computed by hand on tiny inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from lowres_vision.losses import MemoryBankContrastiveLoss, symmetric_contrastive_loss, weighted_cross_entropy
from lowres_vision.metrics import (
    average_metrics,
    bidirectional_retrieval_metrics,
    confusion_matrix,
    retrieval_metrics,
    retrieval_ranks,
    topk_accuracy,
)


# ----------------------------------------------------------------------------- classification


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.06, 0.04], [0.2, 0.3, 0.5], [0.3, 0.2, 0.5]])
    labels = torch.tensor([1, 1, 0, 2])
    # top-1 predictions 1, 0, 2, 2 -> rows 0 and 3 right; top-2 sets {1,2}, {0,1}, {2,1}, {2,0} -> rows 0, 1, 3.
    assert topk_accuracy(logits, labels, ks=(1, 2)) == pytest.approx({"top1": 50.0, "top2": 75.0})
    # With 3 classes, top-5 contains every class.
    assert topk_accuracy(logits, labels)["top5"] == 100.0


def test_confusion_matrix_by_hand():
    predictions, labels = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)
    assert torch.equal(confusion_matrix(F.one_hot(predictions, 3).float(), labels, 3), expected)


def test_classification_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_ranks_by_hand():
    gallery = torch.eye(3)
    # Cosine similarities are proportional to the query's coordinates (the gallery is orthonormal),
    # and the length of a query must not matter.
    queries = torch.tensor([[1.0, 0, 0], [2, 1, 0], [3, 2, 1], [0, 0, 5]])
    ranks = retrieval_ranks(queries, gallery, torch.tensor([0, 1, 2, 2]))
    assert ranks.tolist() == [1, 2, 3, 1]
    metrics = retrieval_metrics(ranks)
    assert metrics == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "mean_rank": 1.75, "median_rank": 1.5})


def test_retrieval_ties_count_for_the_query_and_odd_median():
    ranks = retrieval_ranks(torch.tensor([[1.0, 1.0, 0.0]]), torch.eye(3), torch.tensor([1]))
    assert ranks.tolist() == [1]
    assert retrieval_metrics(torch.tensor([4, 1, 9]))["median_rank"] == 4.0


def test_bidirectional_metrics_average_both_directions():
    a = torch.eye(3)
    b = torch.tensor([[1.0, 0, 0], [0.6, 0, 0.8], [0, 1, 0]])
    # a->b: a0 scores b [1, .6, 0] -> rank 1; a1 scores [0, 0, 1], b2 beats b1 -> rank 2;
    # a2 scores [0, .8, 0], b1 beats b2 (b0 ties, which does not count) -> rank 2.
    forward = retrieval_ranks(a, b, torch.arange(3)).tolist()
    # b->a: b0 -> rank 1; b1 scores a [.6, 0, .8], a0 and a2 beat a1 -> rank 3; b2 scores [0, 1, 0] -> rank 2.
    backward = retrieval_ranks(b, a, torch.arange(3)).tolist()
    assert forward == [1, 2, 2] and backward == [1, 3, 2]
    both = bidirectional_retrieval_metrics(a, b, ks=(1, 2))
    assert both == pytest.approx({"R@1": 100 / 3, "R@2": 0.5 * (300 / 3 + 200 / 3), "mean_rank": 0.5 * (5 / 3 + 2), "median_rank": 2.0})


def test_average_metrics_and_errors():
    assert average_metrics({"R@1": 10.0, "mean_rank": 3.0}, {"R@1": 20.0, "mean_rank": 5.0}) == {"R@1": 15.0, "mean_rank": 4.0}
    with pytest.raises(ValueError, match="same keys"):
        average_metrics({"R@1": 1.0}, {"R@5": 1.0})
    with pytest.raises(ValueError, match=r"ground_truth indices must lie in \[0, 3\)"):
        retrieval_ranks(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"queries \[n, D\] and gallery \[m, D\]"):
        retrieval_ranks(torch.eye(3), torch.eye(4), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- losses


def test_weighted_cross_entropy_by_hand():
    logits = torch.zeros(2, 4)  # uniform: every sample's cross-entropy is log 4
    labels = torch.tensor([0, 3])
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx(math.log(4))
    weighted = weighted_cross_entropy(logits, labels, torch.tensor([1.0, 0.5]))
    assert weighted.item() == pytest.approx(0.75 * math.log(4))
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_cross_entropy(logits, labels, torch.ones(3))


def test_symmetric_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised to e0, e1
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised to e0, (e0 + e1)/sqrt 2
    c = 1 / math.sqrt(2)
    # logits (scale 1) = [[1, c], [0, c]]; targets on the diagonal.
    rows = -math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))
    columns = -math.log(math.e / (math.e + 1)) - math.log(0.5)
    expected = 0.5 * (rows / 2 + columns / 2)
    assert symmetric_contrastive_loss(a, b, logit_scale=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_memory_bank_loss_positives_negatives_and_fifo():
    loss_fn = MemoryBankContrastiveLoss(dim=2, bank_batches=1, logit_scale=1.0).train()
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # Empty bank, one pair: the positive is the only candidate -> loss 0.
    assert loss_fn(e0, e0).item() == pytest.approx(0.0, abs=1e-7)
    # The bank now holds the partner e0: for query e1 the logits are [e1.e1, e1.e0] = [1, 0].
    query = e1.clone().requires_grad_(True)
    loss = loss_fn(query, 2 * e1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    loss.backward()
    assert query.grad is not None
    # FIFO of one batch: e1's partner replaced e0's; the stored keys are normalised and detached.
    assert len(loss_fn.bank) == 1 and torch.equal(loss_fn.bank[0], e1) and not loss_fn.bank[0].requires_grad
    # The bank is a negative for query e0 now: logits [1, 0] again. Eval mode does not enqueue.
    loss_fn.eval()
    assert loss_fn(e0, e0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert torch.equal(loss_fn.bank[0], e1)


def test_memory_bank_loss_in_batch_negatives_match_infonce():
    torch.manual_seed(0)
    queries, keys, old = torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8)
    loss_fn = MemoryBankContrastiveLoss(dim=8, bank_batches=40, logit_scale=80.0)
    loss_fn(torch.randn(3, 8), old)  # fills the bank with one batch
    candidates = torch.cat([F.normalize(keys, dim=-1), F.normalize(old, dim=-1)])
    logits = 80.0 * F.normalize(queries, dim=-1) @ candidates.t()
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    torch.testing.assert_close(loss_fn(queries, keys), expected)
    with pytest.raises(ValueError, match="dim=8"):
        loss_fn(torch.randn(2, 4), torch.randn(2, 4))
