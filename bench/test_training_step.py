"""End to end: one training step of a frozen open_clip ViT with AdaptFormer in every block,
without and with the two baselines (sub-kernel tokenization, domain attention); the report
gives the baselines' overhead in percent. Random initialisation: speed does not depend on weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from . import harness, report


@dataclass(frozen=True)
class StepModel:
    name: str  # open_clip model name
    label_model: str  # as the report names it
    batch: int
    tiny: bool = False

    @property
    def label(self) -> str:
        return f"{self.label_model}, batch {self.batch}"


def step_model(settings: harness.Settings) -> StepModel:
    if settings.smoke:
        return StepModel("ViT-B-16", "tiny open_clip ViT/14", batch=2, tiny=True)
    if settings.device.type == "cuda":
        return StepModel("ViT-H-14", "ViT-H/14", batch=32)
    return StepModel("ViT-B-16", "ViT-B/16", batch=4)  # ViT-H/14 takes ~5 s per forward of 2 images on CPU


CONFIGS = {
    report.BASELINE_FREE: {},
    report.WITH_BASELINES: {"tokenization": {"step": 2, "pool": "max"}, "domain_attention": {"num_maps": 10}},
}
NUM_CLASSES = 32  # the LITE circuits task


@pytest.mark.parametrize("config", list(CONFIGS))
def test_training_step(benchmark, bench_settings, config):
    lowres_vision = pytest.importorskip("lowres_vision")
    model = step_model(bench_settings)
    device = bench_settings.device
    torch.manual_seed(0)
    visual, _ = lowres_vision.build_backbone(model.name, tiny=model.tiny)
    options = dict(CONFIGS[config])
    if "tokenization" in options:
        patch = visual.conv1.kernel_size[0]
        options["tokenization"] = {**options["tokenization"], "sub": patch // 2}
    lowres_vision.inject(visual, adapter={"kind": "adaptformer", "bottleneck": 2, "scale": 0.1}, **options)
    head = nn.Linear(visual.output_dim, NUM_CLASSES, bias=False)
    network = nn.Sequential(visual, head).to(device)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(model.batch, 3, visual.image_size[0], visual.image_size[1], generator=gen).to(device)
    labels = torch.randint(NUM_CLASSES, (model.batch,), generator=gen).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(network(images), labels)
        loss.backward()
        optimizer.step()
        sync()

    benchmark.group = f"training step | {model.label}"
    record = harness.Record(report.TRAINING_STEP, model.name, model.label, config, "end-to-end", "training step", None)
    harness.measure(benchmark, step, bench_settings, first_call_is_setup=False, record=record)
    # Only the injected pieces and the head train.
    injected = {name for name, p in network.named_parameters() if p.requires_grad}
    assert any("adapter" in name for name in injected)
    assert all("adapter" in name or "domain_attention" in name or "logits" in name or name.startswith("1.")
               for name in injected), sorted(injected)
    assert (config == report.WITH_BASELINES) == any("logits" in name for name in injected)
