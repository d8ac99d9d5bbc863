"""Model selection: which epoch's trainable parameters give a run's reported metrics.

`select="best"` (the default) keeps the parameters of the epoch best on the validation split, as the
authors' release does (repository xiaobai1217/Low-Resource-Vision: scripts/train_circuit.py keeps the
highest validation accuracy, scripts/train_map.py the lowest validation loss); `select="last"` reports
the last epoch. The criterion is `select_by` ("top1" for classification; "loss" or "R@1" for
retrieval), by default the release's. The best parameters travel in the checkpoint, so a resumed run
keeps them, and end up in `best.safetensors`; metrics-<split>.json names the parameters and the choice.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..config import SELECT_CRITERIA, ConfigError
from ..data import is_retrieval

HIGHER_IS_BETTER = {"top1": True, "R@1": True, "loss": False}


def selects_best(cfg) -> bool:
    """Whether the run keeps its best epoch (a logistic-regression probe is fitted once: no epochs to choose from)."""
    return cfg.select == "best" and cfg.linear_probe != "logreg"


def parameters_file(cfg) -> str:
    """The file of the parameters a run's reported metrics come from."""
    return "best.safetensors" if selects_best(cfg) else "trainable.safetensors"


def selection_criterion(task: str, select_by: Optional[str]) -> str:
    """The validation metric that picks the best epoch (`select_by`, else the release's for the task)."""
    return select_by if select_by is not None else SELECT_CRITERIA[is_retrieval(task)][0]


class BestEpoch:
    """The best epoch seen so far by validation metric `criterion`, with a CPU copy of its trainable parameters."""

    def __init__(self, criterion: str) -> None:
        self.criterion = criterion
        self.epoch: Optional[int] = None
        self.step: Optional[int] = None  # the global step at the end of that epoch
        self.value: Optional[float] = None
        self.parameters: dict[str, torch.Tensor] = {}

    def consider(self, epoch: int, step: int, metrics: dict[str, float], model) -> bool:
        """Keeps `model`'s parameters if epoch `epoch`'s validation `metrics` beat the best so far (ties keep the earlier)."""
        value = metrics[self.criterion]
        better = self.value is None or (value > self.value if HIGHER_IS_BETTER[self.criterion] else value < self.value)
        if better:
            self.epoch, self.step, self.value = epoch, step, value
            self.parameters = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.trainable_state_dict().items()}
        return better

    def record(self) -> dict[str, Any]:
        """What the results files say about the choice."""
        return {"epoch": self.epoch, "criterion": f"val/{self.criterion}", "value": self.value}

    def state(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "epoch": self.epoch, "step": self.step, "value": self.value}

    def load_state(self, state: dict[str, Any], parameters: dict[str, torch.Tensor]) -> None:
        if state["criterion"] != self.criterion:
            raise ConfigError(f"resume: the checkpoint selects by val/{state['criterion']}, this run by val/{self.criterion}")
        self.epoch, self.step, self.value, self.parameters = state["epoch"], state["step"], state["value"], parameters
