"""Generative augmentation: offline on a tiny random SD pipeline (64 px, 4 steps)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from lowres_vision.augment import (  # noqa: E402
    AugmentConfig, AugmentedDataset, Augmenter, BreakingPairs, Manifest, build_tiny_img2img_pipeline, fit_square,
    genie_img2img, genie_scheduler, genie_timesteps, load_img2img_pipeline, make_sources, merge_manifests, projected_distances,
    read_manifest, run_augmentation, select_noise_ratio, shard,
)
from lowres_vision.augment import generate as generate_module  # noqa: E402
from lowres_vision.augment.cache import Manifest as ManifestClass  # noqa: E402
from lowres_vision.augment.generate import Job  # noqa: E402
from lowres_vision.augment.genie import plan_hard_negatives  # noqa: E402
from lowres_vision.data import ImageReadError  # noqa: E402
from lowres_vision.errors import InputError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

CLASS_NAMES = {0: "resistor", 1: "capacitor", 2: "diode"}
CONFIG = dict(m=1, steps=4, resolution=64, batch_size=4)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_img2img_pipeline(seed=0)


def _noise_image(path: Path, seed: int, size=(40, 52)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    paths = [_noise_image(root / f"{index}.png", index) for index in range(3)]
    return make_sources(paths, [0, 1, 2], [CLASS_NAMES[label] for label in range(3)])


class UNetCalls:
    """Counts UNet forward passes (the cost of generation) while active."""

    def __init__(self, pipe) -> None:
        self.unet, self.count = pipe.unet, 0

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def full_run(pipe, sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    cfg = AugmentConfig(modes=("preserving", "breaking", "genie"), **CONFIG)
    summary = run_augmentation(pipe, sources[:2], CLASS_NAMES, out, cfg, model_id="tiny")
    return out, cfg, summary


# --- GeNIe-Ada's choice, as pure functions ------------------------------------------------------------


def test_select_noise_ratio_picks_ratio_after_largest_jump():
    ratios = [0.5, 0.6, 0.7, 0.8, 0.9]
    # Jumps 0.05, 0.05, 0.5, 0.05: the transition happens between 0.7 and 0.8.
    assert select_noise_ratio(ratios, torch.tensor([0.0, 0.05, 0.1, 0.6, 0.65])) == 0.8
    # A falling curve counts by magnitude; the first jump (0.5 -> 0.6) wins here.
    assert select_noise_ratio(ratios, torch.tensor([0.9, 0.1, 0.0, -0.1, -0.2])) == 0.6
    assert select_noise_ratio(ratios, torch.tensor([0.0, 0.1, 0.2, 0.3, 1.0])) == 0.9
    with pytest.raises(ValueError, match="one distance per ratio"):
        select_noise_ratio(ratios, torch.zeros(4))
    with pytest.raises(ValueError, match="strictly increasing"):
        select_noise_ratio([0.5, 0.5], torch.zeros(2))


def test_projected_distances_hand_computed():
    source, target_mean = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    candidates = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]])
    # v = (-1, 1)/sqrt(2): d = ((z - s) . v)
    expected = torch.tensor([0.0, 1.0, 2.0, 1.0]) / 2 ** 0.5
    torch.testing.assert_close(projected_distances(candidates, source, target_mean), expected)
    with pytest.raises(ValueError, match=r"candidates \[k, d\]"):
        projected_distances(torch.zeros(3), source, target_mean)


class GridScheduler:
    """A scheduler stand-in whose `set_timesteps` yields a given grid."""

    def __init__(self, grid) -> None:
        self.grid, self.config = grid, argparse.Namespace(num_train_timesteps=1000)

    def set_timesteps(self, num_inference_steps):
        self.timesteps = torch.tensor(self.grid[:num_inference_steps])


def _sd15_scheduler_config():
    """SD 1.5's scheduler config as its hub repository stores it: a PNDM config naming no solver setting."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config({
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
    }).config


def test_genie_timesteps_follow_the_release_rule_and_the_paper():
    # Release: noise at int(1000 r) = 800, then the grid timesteps t with t - 1 <= 800 (801 is one).
    grid = GridScheduler([841, 821, 801, 781, 761])
    assert genie_timesteps(grid, 5, 0.8) == (800, [801, 781, 761])
    assert genie_timesteps(GridScheduler([840, 820, 800, 780]), 4, 0.8) == (800, [800, 780])
    # Paper: the last int(r N) = 4 grid timesteps, noised at the first of them.
    assert genie_timesteps(grid, 5, 0.8, "paper") == (821, [821, 801, 781, 761])
    # SD 1.5's DPM-Solver grid, 50 steps: round(linspace(0, 999, 51))[::-1][:-1].
    linspace = genie_scheduler(_sd15_scheduler_config())
    linspace_grid = [round(999 * (50 - k) / 50) for k in range(50)]
    assert genie_timesteps(linspace, 50, 0.8) == (800, linspace_grid[10:]) and linspace_grid[10] == 799
    assert genie_timesteps(linspace, 50, 0.8, "paper") == (799, linspace_grid[10:])
    assert genie_timesteps(linspace, 50, 1.0) == (1000, linspace_grid)
    with pytest.raises(ValueError, match="schedule"):
        genie_timesteps(linspace, 50, 0.8, "boomerang")
    with pytest.raises(ValueError, match="no denoising step"):
        genie_timesteps(linspace, 50, 0.01, "paper")


# DPMSolverMultistepScheduler.from_config(SD 1.5's config).config under diffusers 0.19.0, the version the authors'
# release (repository UCDvision/GeNIe) installs, read from that version's source and printed by it; the last three
# settings did not exist then and are the values that reproduce its last step (to timestep 0, second order from 15
# grid steps on) and its plain sigmas.
RELEASE_SOLVER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "prediction_type": "epsilon", "variance_type": None, "lambda_min_clipped": -float("inf"),
    "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True,
    "use_karras_sigmas": False, "thresholding": False, "timestep_spacing": "linspace",
    "final_sigmas_type": "sigma_min", "euler_at_final": False, "use_lu_lambdas": False,
}
# (steps, r) -> (int(1000 r), the timesteps editor.py's loop runs): its own code (ImageEditor's scheduler,
# diffusion_forward's timestep, __call__'s `if t - 1 > 1000 * percent_noise: continue`) run under diffusers 0.19.0.
RELEASE_RUNS = {
    (50, 0.8): (800, [799, 779, 759, 739, 719, 699, 679, 659, 639, 619, 599, 579, 559, 539, 519, 500, 480, 460, 440,
                      420, 400, 380, 360, 340, 320, 300, 280, 260, 240, 220, 200, 180, 160, 140, 120, 100, 80, 60, 40,
                      20]),
    (50, 0.3): (300, [300, 280, 260, 240, 220, 200, 180, 160, 140, 120, 100, 80, 60, 40, 20]),
    (20, 0.5): (500, [500, 450, 400, 350, 300, 250, 200, 150, 100, 50]),
    (10, 0.3): (300, [300, 200, 100]),
    (4, 1.0): (1000, [999, 749, 500, 250]),
}


def test_genie_scheduler_is_the_release_solver_whatever_the_model_config_asks():
    from diffusers import DPMSolverMultistepScheduler

    scheduler = genie_scheduler(_sd15_scheduler_config())
    assert {name: scheduler.config[name] for name in RELEASE_SOLVER} == RELEASE_SOLVER
    for (steps, ratio), run in RELEASE_RUNS.items():
        assert genie_timesteps(scheduler, steps, ratio) == run
    # A model shipping its own DPM-Solver config (Karras sigmas, "leading" spacing, 3rd order, SDE, final sigma 0)
    # keeps its noise schedule and prediction type; the solver is the release's all the same.
    own = DPMSolverMultistepScheduler(
        beta_start=0.001, beta_end=0.02, beta_schedule="scaled_linear", prediction_type="v_prediction",
        algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun", lower_order_final=False,
        euler_at_final=True, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1,
        final_sigmas_type="zero",
    )
    scheduler = genie_scheduler(own.config)
    noise_schedule = {"beta_start": 0.001, "beta_end": 0.02, "prediction_type": "v_prediction"}
    assert {name: scheduler.config[name] for name in RELEASE_SOLVER} == {**RELEASE_SOLVER, **noise_schedule}
    assert genie_timesteps(scheduler, 50, 0.8) == RELEASE_RUNS[50, 0.8]


def test_genie_sampler_steps_are_dpm_solver_2m_ending_at_timestep_zero(pipe, monkeypatch):
    """Every latent the sampler makes, checked against DPM-Solver++(2M) (arXiv 2211.01095, Algorithm 2) from the
    UNet's recorded outputs: first order on the first step, then x <- (σ_s/σ_t) x - α_s (e^-h - 1) D with
    D = x0 + (x0 - x0_prev)/(2 r), h = λ_s - λ_t, r = (λ_t - λ_prev)/h, λ = log(α/σ), α² = ᾱ; at 20 grid steps
    the last step is second order too and ends at timestep 0, as diffusers 0.19.0 ran the release."""
    calls, decoded = [], []
    hook = pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((args[0].clone(), int(args[1]), output.sample.clone())),
        with_kwargs=True)
    decode = pipe.vae.decode

    def record_decode(latents, **kwargs):
        decoded.append(latents.clone())
        return decode(latents, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", record_decode)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    try:
        genie_img2img(pipe, [image], ["a photo of a diode."], noise_ratio=0.5, num_inference_steps=20,
                      guidance_scale=7.5, generators=[torch.Generator().manual_seed(3)])
    finally:
        hook.remove()
    timesteps = [t for _, t, _ in calls]
    assert timesteps == RELEASE_RUNS[20, 0.5][1]
    alpha_bar = pipe.scheduler.alphas_cumprod.double()

    def alpha_sigma_lambda(t):
        alpha, sigma = alpha_bar[t].sqrt(), (1 - alpha_bar[t]).sqrt()
        return alpha, sigma, torch.log(alpha / sigma)

    latent, previous = calls[0][0][:1].double(), None
    for (model_input, t, output), s in zip(calls, timesteps[1:] + [0]):
        torch.testing.assert_close(model_input[:1].double(), latent, atol=1e-4, rtol=1e-4)
        unconditional, conditional = output.double().chunk(2)
        eps = unconditional + 7.5 * (conditional - unconditional)
        (alpha_t, sigma_t, lambda_t), (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(t), alpha_sigma_lambda(s)
        x0 = (latent - sigma_t * eps) / alpha_t
        h = lambda_s - lambda_t
        if previous is None:
            direction = x0
        else:
            r = (lambda_t - previous[1]) / h
            direction = x0 + (x0 - previous[0]) / (2 * r)
        latent, previous = sigma_s / sigma_t * latent - alpha_s * torch.expm1(-h) * direction, (x0, lambda_t)
    (final,) = decoded
    final = final.double() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(final, latent, atol=1e-4, rtol=1e-4)
    # Later diffusers' default last step (first order to sigma 0) would decode the last x0 prediction instead.
    assert (final - previous[0]).abs().max() > 1e-2


class UNetInputs:
    """Records the (latent input, timestep) of every UNet call while active."""

    def __init__(self, pipe) -> None:
        self.unet, self.calls = pipe.unet, []

    def __enter__(self):
        def record(module, args, kwargs):
            self.calls.append((args[0].clone(), int(args[1])))

        self.handle = self.unet.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("schedule, ratio, noise_timestep, steps", [
    ("release", 0.8, 800, 40), ("paper", 0.8, 799, 40), ("release", 0.799, 799, 40), ("paper", 0.799, 779, 39),
])
def test_genie_sampler_runs_the_schedule_from_the_noised_latent_mode(pipe, schedule, ratio, noise_timestep, steps):
    """At r = 0.8 the release runs 40 UNet steps, from 799 (the grid's last t with t - 1 <= 800), not 41."""
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with UNetInputs(pipe) as unet:
        (output,) = genie_img2img(pipe, [image], ["a photo of a diode."], noise_ratio=ratio, num_inference_steps=50,
                                  guidance_scale=7.5, generators=[torch.Generator().manual_seed(3)], schedule=schedule)
    assert output.size == (64, 64)
    timesteps = [t for _, t in unet.calls]
    grid = [round(999 * (50 - k) / 50) for k in range(50)]
    assert timesteps == grid[50 - steps:] and timesteps[0] <= noise_timestep
    # The first UNet input (guidance doubles the batch) is the VAE latent's mode noised at the start timestep.
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        distribution = pipe.vae.encode(pixels).latent_dist
    noise = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    alpha_bar = pipe.scheduler.alphas_cumprod[noise_timestep]
    start = alpha_bar.sqrt() * 0.18215 * distribution.mode()[0] + (1 - alpha_bar).sqrt() * noise
    first_input = unet.calls[0][0]
    assert first_input.shape == (2, 4, 8, 8)
    torch.testing.assert_close(first_input[0], start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first_input[1], start, atol=1e-5, rtol=1e-5)
    sampled = alpha_bar.sqrt() * 0.18215 * distribution.sample(torch.Generator().manual_seed(0))[0]
    assert (first_input[0] - sampled - (1 - alpha_bar).sqrt() * noise).abs().max() > 1e-2  # a sample would differ


def test_genie_sampler_starts_from_pure_noise_at_full_ratio(pipe):
    """The release returns the noise itself for r > 0.999, then runs every grid step."""
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with UNetInputs(pipe) as unet:
        genie_img2img(pipe, [image], ["a photo of a diode."], noise_ratio=1.0, num_inference_steps=4,
                      guidance_scale=7.5, generators=[torch.Generator().manual_seed(3)])
    noise = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert [t for _, t in unet.calls] == [999, 749, 500, 250]  # round(linspace(0, 999, 5))[::-1][:-1]
    torch.testing.assert_close(unet.calls[0][0][0], noise)


def test_fit_square_squashes_or_crops_the_centre():
    stripes = np.zeros((128, 256, 3), dtype=np.uint8)  # 256 wide: red | green (128 px) | blue
    stripes[:, :64, 0], stripes[:, 64:192, 1], stripes[:, 192:, 2] = 255, 255, 255
    squashed = np.asarray(fit_square(Image.fromarray(stripes), 64, "squash"), dtype=int)
    cropped = np.asarray(fit_square(Image.fromarray(stripes), 64, "center-crop"), dtype=int)
    assert squashed.shape == cropped.shape == (64, 64, 3)
    # Squash keeps all three stripes at a quarter / half / quarter of the width (away from the edges).
    np.testing.assert_allclose(squashed[:, 2:14], np.broadcast_to([255, 0, 0], (64, 12, 3)), atol=3)
    np.testing.assert_allclose(squashed[:, 18:46], np.broadcast_to([0, 255, 0], (64, 28, 3)), atol=3)
    np.testing.assert_allclose(squashed[:, 50:62], np.broadcast_to([0, 0, 255], (64, 12, 3)), atol=3)
    # Resize to 64 high (128 wide), then the centre 64 columns: the green stripe alone.
    np.testing.assert_allclose(cropped[:, 3:61], np.broadcast_to([0, 255, 0], (64, 58, 3)), atol=1)
    with pytest.raises(ValueError, match="resize"):
        fit_square(Image.fromarray(stripes), 64, "pad")


def test_each_mode_gets_its_release_guidance_and_geometry(pipe, tmp_path, monkeypatch):
    stripes = np.zeros((40, 80, 3), dtype=np.uint8)
    stripes[:, :20, 0], stripes[:, 20:60, 1], stripes[:, 60:, 2] = 255, 255, 255
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    (source,) = make_sources([tmp_path / "wide.png"], [0], ["resistor"])
    augmenter = Augmenter(pipe, tmp_path / "out", AugmentConfig(**CONFIG), model_id="tiny")
    handed = {}

    def record_ddim(**kwargs):
        handed["ddim"] = kwargs
        return argparse.Namespace(images=[Image.new("RGB", (64, 64))] * len(kwargs["image"]))

    def record_genie(pipe, images, prompts, **kwargs):
        handed["genie"] = dict(image=images, **kwargs)
        return [Image.new("RGB", (64, 64))] * len(images)

    monkeypatch.setattr(augmenter, "ddim", record_ddim)
    monkeypatch.setattr(generate_module, "genie_img2img", record_genie)
    augmenter.generate([_job(source, seed=1, strength=0.3)])
    augmenter.generate([replace(_job(source, seed=1, kind="genie", strength=0.8), sampler="genie")])
    assert handed["ddim"]["guidance_scale"] == 5.0 and handed["genie"]["guidance_scale"] == 7.5
    assert handed["genie"]["schedule"] == "release" and handed["genie"]["noise_ratio"] == 0.8
    ddim_input = np.asarray(handed["ddim"]["image"][0], dtype=int)
    genie_input = np.asarray(handed["genie"]["image"][0], dtype=int)
    assert ddim_input.shape == genie_input.shape == (64, 64, 3)
    assert ddim_input[32, 4, 0] > 250 and ddim_input[32, 60, 2] > 250  # squashed: the red and blue ends stay
    assert (genie_input[:, 4:60, 1] > 250).all()  # centre crop of 128x64: green only
    # Each mode's settings are part of its images' cache keys.
    other = Augmenter(pipe, tmp_path / "out", AugmentConfig(**CONFIG, guidance_scale=7.5, resize="center-crop"),
                      model_id="tiny")
    job = _job(source, seed=1)
    assert other.key(job) != augmenter.key(job)
    assert augmenter.entry(job, "k")["guidance_scale"] == 5.0 and augmenter.entry(job, "k")["resize"] == "squash"
    # GeNIe's images record their DPM-Solver settings; images cached under another solver are not reused.
    genie_job = replace(_job(source, seed=1, kind="genie", strength=0.8), sampler="genie")
    assert augmenter.entry(genie_job, "k")["dpm_solver"]["final_sigmas_type"] == "sigma_min"
    key = augmenter.key(genie_job)
    monkeypatch.setitem(generate_module.GENIE_DPM_SOLVER, "final_sigmas_type", "zero")
    assert augmenter.key(genie_job) != key


# --- generation ---------------------------------------------------------------------------------------


def _job(source, seed, kind="preserving", strength=0.5):
    return Job(kind=kind, sampler="ddim", source=source, input_path=source.path, input_sha256=source.sha256,
               prompt=f"a circuit diagram of {source.name}", strength=strength, seed=seed, index=0, label=source.label)


def test_generation_size_and_determinism_per_seed(pipe, sources, tmp_path):
    augmenter = Augmenter(pipe, tmp_path, AugmentConfig(**CONFIG), model_id="tiny")
    batch = [_job(sources[0], seed=1), _job(sources[1], seed=2)]
    first = augmenter.generate(batch)
    assert [(image.size, image.mode) for image in first] == [((64, 64), "RGB")] * 2
    again = augmenter.generate(batch)
    for image, repeat in zip(first, again):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(repeat))
    other_seed = augmenter.generate([_job(sources[0], seed=3), _job(sources[1], seed=2)])
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other_seed[0]))
    # Per-image generators: an image does not depend on what else is in its batch.
    np.testing.assert_allclose(np.asarray(other_seed[1], dtype=float), np.asarray(first[1], dtype=float), atol=2)


def test_run_writes_manifest_with_partner_links(full_run, sources):
    out, cfg, summary = full_run
    entries = read_manifest(out / "manifest.jsonl")
    assert summary["generated"] == len(entries) == 2 * 4  # per source: preserving, breaking, partner, genie
    assert sorted(entry["kind"] for entry in entries) == ["breaking"] * 2 + ["genie"] * 2 + ["partner"] * 2 + ["preserving"] * 2
    by_key = {entry["key"]: entry for entry in entries}
    for entry in entries:
        with Image.open(out / entry["path"]) as image:
            assert image.size == (64, 64)
        if entry["kind"] == "preserving":
            assert (entry["label"], entry["strength"]) == (entry["source_label"], 0.3)
        if entry["kind"] == "breaking":
            partner = by_key[entry["partner"]]
            assert (partner["partner_of"], partner["strength"], entry["strength"], entry["label"]) == (entry["key"], 0.3, 0.6, None)
        if entry["kind"] == "genie":
            assert entry["label"] != entry["source_label"] and entry["noise_ratio"] == 0.8
            assert entry["prompt"] == f"a photo of a {CLASS_NAMES[entry['label']]}."
        assert entry["source"] in {source.path for source in sources[:2]}


def test_rerun_generates_nothing(full_run, pipe, sources):
    out, cfg, _ = full_run
    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    with UNetCalls(pipe) as calls:
        summary = run_augmentation(pipe, sources[:2], CLASS_NAMES, out, cfg, model_id="tiny")
    assert (calls.count, summary["generated"]) == (0, 0)
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.png")} == mtimes
    assert len(read_manifest(out / "manifest.jsonl")) == 8


def test_kill_and_resume_loses_and_duplicates_nothing(full_run, pipe, sources, tmp_path, monkeypatch):
    reference, cfg, _ = full_run
    crash_after = 3
    real_append = ManifestClass.append

    def crashing_append(self, entry):
        # The image of the 4th entry is on disk when the "crash" hits, before its manifest line.
        if len(self.entries) == crash_after:
            raise KeyboardInterrupt("simulated crash")
        real_append(self, entry)

    monkeypatch.setattr(ManifestClass, "append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        run_augmentation(pipe, sources[:2], CLASS_NAMES, tmp_path, cfg, model_id="tiny")
    monkeypatch.setattr(ManifestClass, "append", real_append)
    with open(tmp_path / "manifest.jsonl", "a") as file:
        file.write('{"key": "torn')  # the half-written line a kill can leave
    written_before_restart = len(list(tmp_path.rglob("images/*/*.png")))
    assert written_before_restart >= crash_after + 1

    summary = run_augmentation(pipe, sources[:2], CLASS_NAMES, tmp_path, cfg, model_id="tiny")
    entries = read_manifest(tmp_path / "manifest.jsonl")
    keys = [entry["key"] for entry in entries]
    assert len(keys) == len(set(keys)) == 8
    assert summary["generated"] == 8 - written_before_restart  # nothing made twice
    # Identical content to an uninterrupted run (same keys, same partner links).
    assert entries == read_manifest(reference / "manifest.jsonl")


def test_sharded_ranks_merge_to_the_single_process_manifest(full_run, pipe, sources, tmp_path):
    assert shard(list(range(7)), 1, 3) == [1, 4]
    parts = [shard(list(range(10)), rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and all(i % 3 == r for r, part in enumerate(parts) for i in part)
    with pytest.raises(ValueError, match="rank"):
        shard([1], 2, 2)
    reference, cfg, _ = full_run
    for rank in range(2):
        summary = run_augmentation(pipe, sources[:2], CLASS_NAMES, tmp_path, cfg, model_id="tiny", rank=rank, world_size=2)
        assert summary["generated"] == 4
        assert {entry["source"] for entry in read_manifest(tmp_path / f"manifest.rank{rank}.jsonl")} == {sources[rank].path}
    merge_manifests(tmp_path)
    assert _structure(read_manifest(tmp_path / "manifest.jsonl")) == _structure(read_manifest(reference / "manifest.jsonl"))


def _structure(entries):
    """What a manifest must agree on across batchings: every key, except a partner's.

    A partner is keyed by its label-breaking image's file hash, and batched convolutions may
    change that image in the last bits of a pixel, so partners are compared by their link.
    """
    by_key = {entry["key"]: entry for entry in entries}
    assert all(by_key[entry["partner"]]["partner_of"] == entry["key"] for entry in entries if entry["kind"] == "breaking")
    return sorted((entry["kind"], entry["source"], entry["index"], entry["partner_of"] if entry["kind"] == "partner" else entry["key"])
                  for entry in entries)


def test_genie_ada_lists_the_candidate_after_the_largest_jump(pipe, sources, tmp_path):
    def pixel_embedder(images):
        return torch.stack([torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).flatten() for image in images])

    cfg = AugmentConfig(modes=("genie",), genie_adaptive=True, **{**CONFIG, "batch_size": 8})
    summary = run_augmentation(pipe, sources[:2], CLASS_NAMES, tmp_path, cfg, model_id="tiny",
                               embedder=pixel_embedder, embedder_id="pixels")
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert summary["generated"] == 2 * 5 and len(entries) == 2
    augmenter = Augmenter(pipe, tmp_path / "probe", cfg, model_id="tiny")
    for entry in entries:
        assert entry["adaptive"] and entry["ratios"] == [0.5, 0.6, 0.7, 0.8, 0.9]
        assert entry["noise_ratio"] == select_noise_ratio(entry["ratios"], torch.tensor(entry["distances"]))
        source = next(source for source in sources if source.path == entry["source"])
        chosen = Job(kind="genie", sampler="genie", source=source, input_path=source.path,
                     input_sha256=source.sha256, prompt=entry["prompt"], strength=entry["noise_ratio"],
                     seed=entry["seed"], index=0, label=entry["label"])
        assert entry["path"].endswith(augmenter.key(chosen) + ".png")  # the fixed-r GeNIe image at r*


def test_hard_negative_plans_of_the_release_and_the_paper():
    labels, keys = [0, 0, 1, 1, 2], ["e", "a", "d", "b", "c"]
    # Release: every source image once for every other class.
    release = plan_hard_negatives(labels, keys, None, seed=0)
    assert sorted(release) == sorted((position, target, 0) for position in range(5) for target in (0, 1, 2)
                                     if labels[position] != target)
    assert [sum(target == label for _, target, _ in release) for label in (0, 1, 2)] == [3, 3, 4]
    # Paper: the same number per class, sources from the other classes, each once before any repeats.
    for per_class in (2, 4, 5):
        plan = plan_hard_negatives(labels, keys, per_class, seed=0)
        assert [sum(target == label for _, target, _ in plan) for label in (0, 1, 2)] == [per_class] * 3
        assert all(labels[position] != target for position, target, _ in plan)
        for target in (0, 1, 2):
            drawn = [(position, repeat) for position, t, repeat in plan if t == target]
            others = [position for position in range(5) if labels[position] != target]
            assert len(set(drawn)) == per_class  # no image twice with the same repeat index
            assert all(repeat == 0 for position, repeat in drawn[:len(others)])
            assert {position for position, _ in drawn} <= set(others)
            if per_class >= len(others):
                assert {position for position, _ in drawn[:len(others)]} == set(others)
    # The draw follows the keys, not the order the sources come in.
    reversed_plan = plan_hard_negatives(labels[::-1], keys[::-1], 4, seed=0)
    assert sorted((keys[::-1][p], t, r) for p, t, r in reversed_plan) == sorted(
        (keys[p], t, r) for p, t, r in plan_hard_negatives(labels, keys, 4, seed=0))
    with pytest.raises(InputError, match="two classes"):
        plan_hard_negatives([1, 1], ["a", "b"], None, seed=0)


def test_genie_per_class_generates_that_many_images_of_each_class(pipe, sources, tmp_path):
    cfg = AugmentConfig(modes=("genie",), genie_per_class=2, **CONFIG)
    summary = run_augmentation(pipe, sources, CLASS_NAMES, tmp_path, cfg, model_id="tiny")
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert summary["generated"] == len(entries) == 3 * 2
    assert sorted(entry["label"] for entry in entries) == [0, 0, 1, 1, 2, 2]
    assert all(entry["source_label"] != entry["label"] for entry in entries)
    assert all(entry["label_name"] == CLASS_NAMES[entry["label"]] for entry in entries)
    with pytest.raises(InputError, match="genie_per_class"):
        AugmentConfig(genie_per_class=0)


@pytest.mark.parametrize("replace_prob", [0.0, 0.3, 0.8, 1.0])
def test_augmented_dataset_replacement_rate_and_weights(tmp_path, replace_prob):
    colours = [10, 60, 110, 160]
    paths = [tmp_path / f"src{index}.png" for index in range(4)]
    for path, colour in zip(paths, colours):
        Image.new("RGB", (4, 4), (colour,) * 3).save(path)
    from lowres_vision.augment.cache import file_sha256

    lines = []
    for index in range(3):  # the last source has no label-preserving images
        for copy in range(2):
            relative = f"images/p{index}_{copy}.png"
            (tmp_path / "images").mkdir(exist_ok=True)
            Image.new("RGB", (4, 4), (200 + 20 * copy, index, 0)).save(tmp_path / relative)
            lines.append({"key": f"{index}{copy}", "path": relative, "kind": "preserving", "source": str(paths[index]),
                          "source_sha256": file_sha256(paths[index]), "label": index})
    lines.append({"key": "b", "path": "images/p0_0.png", "kind": "breaking", "source": str(paths[0]),
                  "source_sha256": file_sha256(paths[0]), "label": None})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32)[0, 0].copy())

    class Base(torch.utils.data.Dataset):
        def __init__(self):
            self.paths, self.transform = paths, transform

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, index):
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB")), index

    dataset = AugmentedDataset(Base(), tmp_path / "manifest.jsonl", replace_prob=replace_prob)
    replaced = []
    for epoch in range(200):
        dataset.set_epoch(epoch)
        for index in range(4):
            image, label, weight = dataset[index]
            assert label == index and weight.dtype == torch.float32
            is_replaced = image[0].item() >= 200
            assert weight.item() == pytest.approx(0.65 if is_replaced else 1.0)
            if not is_replaced:
                assert image[0].item() == colours[index]
            if index < 3:
                replaced.append(is_replaced)
            else:
                assert not is_replaced
    assert abs(np.mean(replaced) - replace_prob) < 0.06  # 600 draws: 3 standard deviations at most
    dataset.set_epoch(7)
    assert [dataset.replacement(i) for i in range(4)] == [dataset.replacement(i) for i in range(4)]
    assert AugmentedDataset(Base(), tmp_path / "manifest.jsonl", replace_prob=0.0).replacement(0) is None


def _grey_pairs(directory: Path, count: int) -> list[tuple[Path, Path]]:
    """(query, gallery) image pairs of solid greys: query i is 10 + i, gallery image i is 50 + i."""
    pairs = []
    for index in range(count):
        pair = (directory / f"q{index}.png", directory / f"g{index}.png")
        for path, grey in zip(pair, (10 + index, 50 + index)):
            Image.new("RGB", (4, 4), (grey,) * 3).save(path)
        pairs.append(pair)
    return pairs


def _preserving_manifest(directory: Path, sources: list[Path]) -> Path:
    """Two label-preserving images (greys 100 + 4 k and 101 + 4 k) of each source k."""
    from lowres_vision.augment.cache import file_sha256

    (directory / "images").mkdir(exist_ok=True)
    lines = []
    for index, source in enumerate(sources):
        for copy in range(2):
            relative = f"images/keep{index}_{copy}.png"
            Image.new("RGB", (4, 4), (100 + 4 * index + copy,) * 3).save(directory / relative)
            lines.append({"key": f"{index}_{copy}", "path": relative, "kind": "preserving", "source": str(source),
                          "source_sha256": file_sha256(source), "label": index})
    (directory / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory / "manifest.jsonl"


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("replace_prob", [0.0, 0.5, 1.0])
def test_augmented_pairs_replace_the_query_or_either_side(tmp_path, symmetric, replace_prob):
    from lowres_vision.augment import AugmentedPairDataset
    from lowres_vision.data import PairDataset, RetrievalSplit

    pairs = _grey_pairs(tmp_path, 4)
    split = RetrievalSplit(tuple(q for q, _ in pairs), tuple(g for _, g in pairs), (0, 1, 2, 3), symmetric=symmetric)
    manifest = _preserving_manifest(tmp_path, [path for pair in pairs for path in pair])  # source 2i: query i, 2i + 1: gallery i

    def grey(image):
        return int(np.asarray(image)[0, 0, 0])

    dataset = AugmentedPairDataset(PairDataset(split, grey), manifest, replace_prob=replace_prob, replaced_weight=0.65, seed=1)
    replaced = {"query": 0, "gallery": 0, "none": 0}
    for epoch in range(150):
        dataset.set_epoch(epoch)
        for index in range(4):
            query, gallery, weight = dataset[index]
            query_kept, gallery_kept = query == 10 + index, gallery == 50 + index
            assert query_kept or query in (100 + 8 * index, 101 + 8 * index)  # one of the query's own images
            assert gallery_kept or gallery in (104 + 8 * index, 105 + 8 * index)
            assert query_kept or gallery_kept  # at most one side per pair
            side = "none" if query_kept and gallery_kept else "query" if gallery_kept else "gallery"
            assert weight.item() == pytest.approx(1.0 if side == "none" else 0.65)
            replaced[side] += 1
    draws = 600
    assert abs(1 - replaced["none"] / draws - replace_prob) < 0.07  # within 3.5 standard deviations
    if symmetric:  # drawing <-> render: either side, with equal chance
        assert abs(replaced["gallery"] - replaced["query"]) <= 4 * (draws * replace_prob) ** 0.5
    else:  # old map -> satellite: the release replaces the old map only
        assert replaced["gallery"] == 0


def test_breaking_pairs_yield_image_and_partner(full_run):
    out, _, _ = full_run
    pairs = BreakingPairs(out / "manifest.jsonl", lambda image: torch.from_numpy(np.asarray(image).copy()))
    entries = {entry["key"]: entry for entry in read_manifest(out / "manifest.jsonl")}
    assert len(pairs) == 2
    breaking, partner = pairs[0]
    first_partner = next(entry for entry in entries.values() if entry["kind"] == "partner")
    with Image.open(out / entries[first_partner["partner_of"]]["path"]) as image:
        np.testing.assert_array_equal(breaking.numpy(), np.asarray(image))
    with Image.open(out / first_partner["path"]) as image:
        np.testing.assert_array_equal(partner.numpy(), np.asarray(image))


# --- errors -------------------------------------------------------------------------------------------


def test_missing_model_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="/no/such/sd-model"):
        load_img2img_pipeline("/no/such/sd-model")
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        load_img2img_pipeline(str(tmp_path))  # exists, but is no diffusers pipeline


def test_unreadable_source_image_names_it(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        make_sources([broken], [0], ["resistor"])


def test_config_rejects_strength_without_denoising_steps():
    with pytest.raises(ValueError, match="preserve_strength=0.3 with steps=3"):
        AugmentConfig(steps=3)
    with pytest.raises(ValueError, match="modes"):
        AugmentConfig(modes=("flip",))


def test_manifest_open_drops_entries_without_images(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "kept.png")
    lines = [{"key": "a", "path": "kept.png"}, {"key": "b", "path": "missing.png"}, {"key": "a", "path": "kept.png"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"torn')
    manifest = Manifest.open(tmp_path / "manifest.jsonl")
    assert list(manifest.entries) == ["a"]
    assert read_manifest(tmp_path / "manifest.jsonl") == [lines[0]]


# --- command line -------------------------------------------------------------------------------------


def _toy_circuits(root: Path) -> Path:
    data = root / "circuits"
    (data / "data").mkdir(parents=True)
    (data / "label_map.csv").write_text("id,name\n0,resistor\n1,capacitor\n")
    (data / "train_5_shots.csv").write_text("id,filename,label\n0,a.png,0\n1,b.png,1\n")
    _noise_image(data / "data" / "a.png", 0)
    _noise_image(data / "data" / "b.png", 1)
    return root


def _augment_args(tmp_path, *flags):
    from lowres_vision.commands import augment as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser.parse_args(["augment", "--data-root", str(_toy_circuits(tmp_path / "lite")), "--task", "circuits",
                              "--out", str(tmp_path / "aug"), "--tiny", "--steps", "4", "--device", "cpu", *flags])


def test_cli_augments_a_lite_circuits_split(tmp_path, capsys):
    args = _augment_args(tmp_path, "--modes", "preserving", "--m", "2")
    assert args.func(args) == 0
    entries = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    assert len(entries) == 4 and {entry["prompt"] for entry in entries} == {
        "a circuit diagram of resistor", "a circuit diagram of capacitor"}
    assert (tmp_path / "aug" / "examples.png").stat().st_size > 0
    assert "generated 4 images" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "aug")


def test_cli_augments_historic_maps_for_training(lite_root, tmp_path):
    """`augment --task historic-maps` writes what `train` reads: label-preserving images of the old maps
    stand in for them, the label-breaking pairs feed the contrastive loss."""
    from lowres_vision.commands import augment as command
    from lowres_vision.config import TrainConfig
    from lowres_vision.data import load_split
    from lowres_vision.training import train
    from lowres_vision.training.inputs import train_dataset

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args([
        "augment", "--data-root", str(lite_root), "--task", "historic-maps", "--out", str(tmp_path / "aug"),
        "--tiny", "--modes", "preserving,breaking", "--m", "1", "--steps", "4", "--device", "cpu",
    ])
    assert args.func(args) == 0
    entries = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    maps = load_split("historic-maps", lite_root, "train").query_paths
    assert sorted(entry["source"] for entry in entries if entry["kind"] == "preserving") == sorted(map(str, maps))

    cfg = TrainConfig(task="historic-maps", data_root=str(lite_root), tiny=True, image_size=56, epochs=1, batch_size=2,
                      out=str(tmp_path / "run"), eval_every=0, select="last", adapter={"kind": "lora", "rank": 2},
                      augment_manifest=str(tmp_path / "aug" / "manifest.jsonl"), replace_prob=1.0)
    preserving = {str(tmp_path / "aug" / entry["path"]) for entry in entries if entry["kind"] == "preserving"}
    dataset = train_dataset(cfg, lambda image: image)
    assert all(str(dataset.pair(index)[0]) in preserving and dataset.pair(index)[2] for index in range(len(dataset)))
    train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if record["event"] == "step"] == [1, 2]  # 3 satellites, batches of 2
    epoch = next(record for record in log if record["event"] == "epoch")
    assert (epoch["samples"]["original"], epoch["samples"]["preserving"]) == (0, 3)


def test_cli_genie_images_are_trained_on(lite_root, tmp_path):
    """`augment --modes genie` writes what `train --genie-manifest` appends to the training set."""
    from lowres_vision.commands import augment as command
    from lowres_vision.config import TrainConfig
    from lowres_vision.training import train

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args([
        "augment", "--data-root", str(lite_root), "--task", "circuits", "--out", str(tmp_path / "aug"),
        "--tiny", "--modes", "genie", "--genie-per-class", "2", "--steps", "4", "--device", "cpu",
    ])
    assert args.func(args) == 0
    entries = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    assert sorted(entry["label"] for entry in entries) == [0, 0, 1, 1, 2, 2]
    cfg = TrainConfig(task="circuits", data_root=str(lite_root), tiny=True, image_size=56, epochs=1, batch_size=6,
                      out=str(tmp_path / "run"), eval_every=0, select="last", tokenization={"pool": "avg"},
                      genie_manifest=str(tmp_path / "aug" / "manifest.jsonl"))
    train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if record["event"] == "step"] == [1, 2, 3]  # (12 + 6) / 6
    epoch = next(record for record in log if record["event"] == "epoch")
    assert epoch["samples"] == {"original": 12, "preserving": 0, "genie": 6, "breaking_pairs": 0}


def test_cli_genie_ada_needs_a_trained_or_named_embedder(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"task": "circuits", "data_root": str(tmp_path), "tiny": True, "image_size": 56}))
    ada = ["--modes", "genie", "--genie-ada"]
    for flags, message in [
        (ada, "GeNIe-Ada needs an embedder: --embedder-config"),
        ([*ada, "--embedder-config", str(config)], "randomly initialised 'ViT-B-16'"),
        ([*ada, "--embedder", "ViT-B-16"], "randomly initialised 'ViT-B-16'"),
        ([*ada, "--embedder-config", str(config), "--embedder", "ViT-B-16"], "not both"),
        (["--modes", "genie", "--embedder", "ViT-B-16"], "only GeNIe-Ada"),
    ]:
        args = _augment_args(tmp_path, *flags)
        with pytest.raises(InputError, match=message):
            args.func(args)
        shutil.rmtree(tmp_path / "lite")
        assert not (tmp_path / "aug").exists()  # refused before anything was generated


def test_cli_genie_ada_scores_with_the_backbone_being_adapted(tmp_path):
    from lowres_vision.augment.genie import EmbedderSpec, build_embedder
    from lowres_vision.config import load_config

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"task": "circuits", "data_root": str(tmp_path), "tiny": True, "image_size": 56,
                                  "seed": 3}))
    args = _augment_args(tmp_path, "--modes", "genie", "--genie-ada", "--embedder-config", str(config),
                         "--allow-random-embedder")
    assert args.func(args) == 0
    entries = read_manifest(tmp_path / "aug" / "manifest.jsonl")
    spec = EmbedderSpec.from_train_config(load_config(config))
    assert spec == EmbedderSpec("ViT-B-16", image_size=56, tiny=True, seed=3)
    assert len(entries) == 2 and all(entry["embedder"] == spec.identity() for entry in entries)
    # The recorded distances are those of the run's backbone (seed 3), recomputed here from the cached candidates.
    cfg = AugmentConfig(modes=("genie",), genie_adaptive=True, m=10, steps=4, resolution=64)
    augmenter = Augmenter(pipe=build_tiny_img2img_pipeline(), out_dir=tmp_path / "aug", cfg=cfg, model_id="tiny-random")
    sources = make_sources(sorted((tmp_path / "lite" / "circuits" / "data").glob("*.png")), [0, 1],
                           ["resistor", "capacitor"])
    for seed, same in ((3, True), (4, False)):
        embed = build_embedder(replace(spec, seed=seed), allow_random=True)
        source_embeddings = torch.nn.functional.normalize(embed([Image.open(s.path) for s in sources]), dim=-1)
        for entry in entries:
            source = next(s for s in sources if s.path == entry["source"])
            candidates = [Job(kind="genie", sampler="genie", source=source, input_path=source.path,
                              input_sha256=source.sha256, prompt=entry["prompt"], strength=ratio, seed=entry["seed"],
                              index=0, label=entry["label"]) for ratio in entry["ratios"]]
            images = [Image.open(augmenter.path(augmenter.key(job))) for job in candidates]
            candidate_embeddings = torch.nn.functional.normalize(embed(images), dim=-1)
            target_mean = source_embeddings[entry["label"]]  # one source image per class
            distances = projected_distances(candidate_embeddings, source_embeddings[source.label], target_mean)
            assert torch.allclose(distances, torch.tensor(entry["distances"]), atol=1e-5) == same


def test_the_augment_commands_defaults_are_augment_configs():
    """The command takes its defaults from AugmentConfig, the one home of each generation setting."""
    from lowres_vision.cli import build_parser

    args = build_parser().parse_args(["augment", "--data-root", "x", "--task", "circuits", "--out", "y"])
    defaults = AugmentConfig()
    flag_to_field = {"m": "m", "steps": "steps", "batch_size": "batch_size", "preserve_strength": "preserve_strength",
                     "break_strength": "break_strength", "guidance_scale": "guidance_scale", "resize": "resize",
                     "genie_prompt": "genie_prompt_template", "genie_ratio": "genie_ratio",
                     "genie_guidance_scale": "genie_guidance_scale", "genie_resize": "genie_resize",
                     "genie_schedule": "genie_schedule", "genie_per_class": "genie_per_class", "seed": "seed"}
    for flag, name in flag_to_field.items():
        assert getattr(args, flag) == getattr(defaults, name), flag
    assert tuple(args.modes.split(",")) == defaults.modes
