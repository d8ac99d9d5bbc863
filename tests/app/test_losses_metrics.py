"""Losses and metrics against values computed by hand on tiny inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from lowres_vision.losses import MemoryBankContrastiveLoss, symmetric_contrastive_loss, weighted_cross_entropy
from lowres_vision.metrics import (
    average_metrics,
    confusion_matrix,
    retrieval_metrics,
    retrieval_ranks,
    split_retrieval_metrics,
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


def test_split_metrics_average_two_directions_that_differ():
    a = torch.eye(3)
    b = torch.tensor([[1.0, 0, 0], [0.6, 0, 0.8], [0, 1, 0]])
    # a->b: a0 scores b [1, .6, 0] -> rank 1; a1 scores [0, 0, 1], b2 beats b1 -> rank 2;
    # a2 scores [0, .8, 0], b1 beats b2 (b0 ties, which does not count) -> rank 2.
    forward = retrieval_ranks(a, b, torch.arange(3)).tolist()
    # b->a: b0 -> rank 1; b1 scores a [.6, 0, .8], a0 and a2 beat a1 -> rank 3; b2 scores [0, 1, 0] -> rank 2.
    backward = retrieval_ranks(b, a, torch.arange(3)).tolist()
    assert forward == [1, 2, 2] and backward == [1, 3, 2]
    # The same pairs with the gallery stored in another order: query i's match b_i sits at gallery[where[i]].
    order = torch.tensor([2, 0, 1])
    where = order.argsort()
    both = split_retrieval_metrics(a, b[order], where, symmetric=True, ks=(1, 2))
    assert both["query_to_gallery/mean_rank"] == pytest.approx(5 / 3)
    assert both["gallery_to_query/mean_rank"] == pytest.approx(2.0)
    assert {name: both[name] for name in ("R@1", "R@2", "mean_rank", "median_rank")} == pytest.approx(
        {"R@1": 100 / 3, "R@2": 0.5 * (300 / 3 + 200 / 3), "mean_rank": 0.5 * (5 / 3 + 2), "median_rank": 2.0})
    one_way = split_retrieval_metrics(a, b[order], where, symmetric=False, ks=(1, 2))
    assert one_way == pytest.approx({"R@1": 100 / 3, "R@2": 100.0, "mean_rank": 5 / 3, "median_rank": 2.0})


def test_average_metrics_and_errors():
    assert average_metrics({"R@1": 10.0, "mean_rank": 3.0}, {"R@1": 20.0, "mean_rank": 5.0}) == {"R@1": 15.0, "mean_rank": 4.0}
    with pytest.raises(ValueError, match="same keys"):
        average_metrics({"R@1": 1.0}, {"R@5": 1.0})
    with pytest.raises(ValueError, match=r"ground_truth indices must lie in \[0, 3\)"):
        retrieval_ranks(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"queries \[n, D\] and gallery \[m, D\]"):
        retrieval_ranks(torch.eye(3), torch.eye(4), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- losses


def test_weighted_cross_entropy_is_normalised_by_the_weights():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    first, second = math.log(4), -math.log(math.exp(2) / (math.exp(2) + 3))
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx((first + second) / 2)
    weighted = weighted_cross_entropy(logits, labels, torch.tensor([1.0, 0.65]))
    assert weighted.item() == pytest.approx((first + 0.65 * second) / 1.65)
    # Only the weights' ratios matter.
    assert weighted_cross_entropy(logits, labels, torch.tensor([2.0, 1.3])).item() == pytest.approx(weighted.item())
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_cross_entropy(logits, labels, torch.ones(3))


def _symmetric_loss_by_hand(a, b, scale, weights):
    """The release's weighted symmetric loss, one pair at a time in float64."""
    def unit(row):
        return [value / math.sqrt(sum(v * v for v in row)) for value in row]

    a, b = [unit(row) for row in a.tolist()], [unit(row) for row in b.tolist()]
    logits = [[scale * sum(x * y for x, y in zip(u, v)) for v in b] for u in a]
    n = len(a)
    rows = [math.log(sum(math.exp(value) for value in logits[i])) - logits[i][i] for i in range(n)]
    columns = [math.log(sum(math.exp(logits[k][i]) for k in range(n))) - logits[i][i] for i in range(n)]
    total = sum(weights)
    return 0.5 * (sum(w * r for w, r in zip(weights, rows)) / total + sum(w * c for w, c in zip(weights, columns)) / total)


def test_symmetric_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised to e0, e1
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised to e0, (e0 + e1)/sqrt 2
    c = 1 / math.sqrt(2)
    # logits (scale 1) = [[1, c], [0, c]]; targets on the diagonal.
    rows = -math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))
    columns = -math.log(math.e / (math.e + 1)) - math.log(0.5)
    expected = 0.5 * (rows / 2 + columns / 2)
    assert symmetric_contrastive_loss(a, b, logit_scale=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(_symmetric_loss_by_hand(a, b, 1.0, [1.0, 1.0]))


def test_symmetric_contrastive_loss_scales_logits_and_weights_pairs():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    weights = [1.0, 0.65, 1.0, 0.65]
    for scale in (3.0, 0.5):  # multiplying and dividing by the scale differ for any scale but 1
        expected = _symmetric_loss_by_hand(a, b, scale, [1.0] * 4)
        assert symmetric_contrastive_loss(a, b, logit_scale=scale).item() == pytest.approx(expected, rel=1e-5)
        expected = _symmetric_loss_by_hand(a, b, scale, weights)
        actual = symmetric_contrastive_loss(a, b, logit_scale=scale, weights=torch.tensor(weights))
        assert actual.item() == pytest.approx(expected, rel=1e-5)
    assert _symmetric_loss_by_hand(a, b, 3.0, weights) != pytest.approx(_symmetric_loss_by_hand(a, b, 3.0, [1.0] * 4))


def _label_breaking_loss_by_hand(breaking, partners, bank, scale):
    """Eq. 1 of the LITE paper as its authors' release computes it, one query at a time, in float64."""
    def unit(row):
        return [value / math.sqrt(sum(v * v for v in row)) for value in row]

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    keys = [unit(row) for row in breaking.tolist()] + [unit(row) for row in bank.tolist()]
    total = 0.0
    for j, partner in enumerate(partners.tolist()):
        query = unit(partner)  # the partner x'_j asks; its own label-breaking x_j is the positive
        total -= scale * dot(query, keys[j]) - math.log(sum(math.exp(scale * dot(query, key)) for key in keys))
    return total / len(partners)


def test_memory_bank_loss_matches_eq1_with_a_filled_bank():
    torch.manual_seed(0)
    loss_fn = MemoryBankContrastiveLoss(dim=5, bank_size=6, logit_scale=3.0).train()
    first = torch.randn(4, 5)
    loss_fn(first, torch.randn(4, 5))  # the bank now holds the 4 label-breaking features of this batch
    breaking, partners = torch.randn(3, 5), torch.randn(3, 5)
    expected = _label_breaking_loss_by_hand(breaking, partners, first, 3.0)
    assert loss_fn(breaking, partners).item() == pytest.approx(expected, rel=1e-5)
    # The roles are not interchangeable: label-breaking queries against partners give another value.
    swapped = _label_breaking_loss_by_hand(partners, breaking, first, 3.0)
    assert abs(swapped - expected) > 1e-2


def test_memory_bank_is_a_fifo_of_label_breaking_features_counted_in_features():
    loss_fn = MemoryBankContrastiveLoss(dim=2, bank_size=3, logit_scale=1.0).train()
    features = [torch.tensor([[math.cos(angle), math.sin(angle)]]) for angle in (0.1, 0.2, 0.3, 0.4, 0.5)]
    partner = torch.tensor([[0.0, 5.0]])
    loss_fn(torch.cat([2 * features[0], 3 * features[1]]), torch.cat([partner, partner]))
    assert torch.allclose(loss_fn.bank, torch.cat(features[:2]))  # normalised label-breaking features, not partners
    loss_fn(torch.cat(features[2:4]).requires_grad_(), torch.cat([partner, partner]))
    assert torch.allclose(loss_fn.bank, torch.cat(features[1:4]))  # 4 features seen, the oldest one left
    assert not loss_fn.bank.requires_grad
    # Eval mode reads the bank without adding to it.
    loss_fn.eval()
    expected = _label_breaking_loss_by_hand(features[4], partner, torch.cat(features[1:4]), 1.0)
    assert loss_fn(features[4], partner).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(loss_fn.bank, torch.cat(features[1:4]))
    # The paper's N is the default; bank_size 0 keeps no bank.
    assert MemoryBankContrastiveLoss(dim=2).bank_size == 100
    empty = MemoryBankContrastiveLoss(dim=2, bank_size=0).train()
    empty(features[0], partner)
    assert empty.bank.shape == (0, 2)


def test_memory_bank_loss_gradient_reaches_both_sides_but_not_the_bank():
    loss_fn = MemoryBankContrastiveLoss(dim=3, bank_size=4).train()
    loss_fn(torch.randn(2, 3), torch.randn(2, 3))
    breaking, partners = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    loss_fn(breaking, partners).backward()
    assert breaking.grad.abs().sum() > 0 and partners.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dim=3"):
        loss_fn(torch.randn(2, 4), torch.randn(2, 4))
