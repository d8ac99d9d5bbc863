"""Images/s of diffusion augmentation: one batched pipeline call vs one call per image, same run.

Runs the real generation path (`Augmenter.generate`) on the tiny random SD pipeline, so it measures
what batching buys in call overhead and UNet occupancy, not SD 1.5's absolute speed:

    pytest bench/test_augment_throughput.py                      # time both, compare images_per_second
    pytest bench/test_augment_throughput.py --benchmark-disable  # smoke: one call each
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from lowres_vision.augment import AugmentConfig, Augmenter, build_tiny_img2img_pipeline, make_sources  # noqa: E402
from lowres_vision.augment.generate import Job  # noqa: E402

IMAGES = 8


@pytest.fixture(scope="module")
def augmenter(bench_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("augment_bench")
    pipe = build_tiny_img2img_pipeline(device=bench_settings.device)
    cfg = AugmentConfig(m=1, steps=4, resolution=64, batch_size=IMAGES)
    return Augmenter(pipe, root / "out", cfg, model_id="tiny")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment_sources")
    paths = []
    for index in range(IMAGES):
        paths.append(root / f"{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    sources = make_sources(paths, range(IMAGES), ["resistor"] * IMAGES)
    return [
        Job(kind="breaking", sampler="ddim", source=source, input_path=source.path, input_sha256=source.sha256,
            prompt="a circuit diagram of resistor", strength=0.6, seed=index, index=0, label=None)
        for index, source in enumerate(sources)
    ]


@pytest.mark.parametrize("batching", ["batched", "one_at_a_time"])
def test_augment_throughput(benchmark, bench_settings, augmenter, jobs, batching):
    def generate_all():
        if batching == "batched":
            return augmenter.generate(jobs)
        return [image for job in jobs for image in augmenter.generate([job])]

    benchmark.group = f"augment img2img | tiny SD 64px, {len(jobs)} images | {bench_settings.device.type}"
    images = benchmark.pedantic(generate_all, rounds=3, iterations=1, warmup_rounds=1)
    assert len(images) == len(jobs) and all(image.size == (64, 64) for image in images)
    if benchmark.stats is not None:  # absent under --benchmark-disable
        benchmark.extra_info["images_per_second"] = len(jobs) / benchmark.stats.stats.mean
