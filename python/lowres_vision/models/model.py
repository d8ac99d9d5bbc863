"""`LowresModel`: an (injected) frozen vision tower plus a task head, the unit training works with."""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from .tower import Tower


class LowresModel(nn.Module):
    """images [B, 3, H, W] -> head(tokens), with tokens the output of the tower's last block [B, N, D].

    The tokens are taken with a forward hook on the tower's trunk (open_clip `visual.transformer`,
    timm `visual.blocks`), so the tower keeps its own forward and any injection in it; its final
    norm and projection still run but their output is not used (the head has its own).
    Parameter names start with `visual.` and `head.`, e.g. `visual.conv1.logits`.
    """

    def __init__(self, visual: nn.Module, head: nn.Module) -> None:
        super().__init__()
        tower = Tower(visual)
        if not tower.has_class_token:
            raise ValueError(f"LowresModel: the heads read the class token, and this {type(visual).__name__} has none")
        self.visual = visual
        self.head = head
        self._tokens = None
        self._tap = tower.trunk.register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._tokens = output

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        self.visual(images)
        tokens, self._tokens = self._tokens, None
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_tokens(images))

    def trainable_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """(name, parameter) for every parameter that requires a gradient."""
        return ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable parameters only, detached, keyed by their module path (for trainable.safetensors)."""
        return {name: p.detach() for name, p in self.trainable_parameters()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Loads what `trainable_state_dict` saved; every trainable parameter must be present, nothing else."""
        expected = dict(self.trainable_parameters())
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"load_trainable_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        with torch.no_grad():
            for name, parameter in expected.items():
                if state[name].shape != parameter.shape:
                    raise ValueError(
                        f"load_trainable_state_dict: {name} has shape {tuple(state[name].shape)}, "
                        f"the model expects {tuple(parameter.shape)}"
                    )
                parameter.copy_(state[name])
