"""The linear probe of the authors' release: logistic regression on frozen features.

The release (repository xiaobai1217/Low-Resource-Vision, file linear_probe/circuit.py) fits
`sklearn.linear_model.LogisticRegression(random_state=0, C=0.316, max_iter=1000)` on the frozen
model's features of the training images and predicts the test images with it. Here the features are
what a `ClassificationHead` reads (the layer-normed class token of the last block, without affine),
computed with the evaluation transform, once; the fitted coefficients and intercepts become the
head's Linear, so the run writes the same files as any other and `evaluate` re-evaluates it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import ClassificationDataset, load_split
from .evaluation import run_model

LOGREG_C = 0.316
LOGREG_MAX_ITER = 1000


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                            C: float = LOGREG_C, max_iter: int = LOGREG_MAX_ITER, seed: int = 0,
                            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fits the release's classifier; returns (weight [K, D], bias [K], iterations used).

    `features @ weight.T + bias` ranks the classes as sklearn's `decision_function` does, so its
    argmax is sklearn's `predict`. Two classes: sklearn fits one score s; the rows are -s/2 and s/2,
    whose softmax is its `predict_proba`. A class without training images gets weight 0 and bias
    -inf: it is never predicted, as sklearn never predicts it.
    """
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(random_state=seed, C=C, max_iter=max_iter)
    classifier.fit(features.double().numpy(), labels.numpy())
    coef = torch.from_numpy(np.asarray(classifier.coef_, dtype=np.float64))
    intercept = torch.from_numpy(np.asarray(classifier.intercept_, dtype=np.float64))
    if len(classifier.classes_) == 2:
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    weight = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    bias = torch.full((num_classes,), float("-inf"), dtype=torch.float64)
    seen = torch.as_tensor(classifier.classes_, dtype=torch.long)
    weight[seen], bias[seen] = coef, intercept
    return weight, bias, int(np.max(classifier.n_iter_))


def fit_linear_probe(model: nn.Module, cfg: TrainConfig, transform, device: torch.device) -> dict[str, int]:
    """Fits `model.head` (a ClassificationHead with bias, norm without affine) on cfg's train split;
    returns what the log records: the number of training images and the solver's iterations."""
    split = load_split(cfg.task, cfg.data_root, "train")
    was_training = model.training
    model.eval()
    try:
        features = run_model(lambda images: model.head.features(model.forward_tokens(images)),
                             ClassificationDataset(split, transform), cfg, device, "linear probe features")
    finally:
        model.train(was_training)
    weight, bias, iterations = fit_logistic_regression(features, torch.tensor(split.labels), len(split.class_names),
                                                       seed=cfg.seed)
    with torch.no_grad():
        model.head.linear.weight.copy_(weight)
        model.head.linear.bias.copy_(bias)
    return {"train_samples": len(split.labels), "iterations": iterations}
