"""Generative augmentation with Stable Diffusion img2img: label-preserving, label-breaking (+ partners), GeNIe, GeNIe-Ada.

    pipe = load_img2img_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cuda")
    run_augmentation(pipe, make_sources(paths, labels, names), class_names, "aug/", AugmentConfig(), model_id=...)
    AugmentedDataset(train_set, "aug/manifest.jsonl"); BreakingPairs("aug/manifest.jsonl", transform)
    WithHardNegatives(train_set, "aug/manifest.jsonl", class_names, weighted=False)   # GeNIe images appended

diffusers and transformers are imported only when a pipeline is built.
"""

from .cache import KINDS, Manifest, cache_key, merge_manifests, read_manifest, shard
from .data import AugmentedDataset, AugmentedPairDataset, BreakingPairs
from .generate import MODES, AugmentConfig, Augmenter, Source, make_sources, run_augmentation
from .genie import GENIE_ADA_RATIOS, EmbedderSpec, backbone_embedder, build_embedder, plan_hard_negatives
from .genie import projected_distances, select_noise_ratio
from .genie_sampler import GENIE_DPM_SOLVER, GENIE_SCHEDULES, genie_img2img, genie_scheduler, genie_timesteps
from .hard_negatives import WithHardNegatives
from .pipeline import DEFAULT_MODEL, RESIZES, TINY_MODEL, build_tiny_img2img_pipeline, fit_square, load_img2img_pipeline

__all__ = [
    "AugmentConfig", "AugmentedDataset", "AugmentedPairDataset", "Augmenter", "BreakingPairs", "DEFAULT_MODEL",
    "EmbedderSpec", "GENIE_ADA_RATIOS", "GENIE_DPM_SOLVER", "GENIE_SCHEDULES", "KINDS", "MODES", "Manifest",
    "RESIZES", "Source", "TINY_MODEL", "WithHardNegatives", "backbone_embedder", "build_embedder",
    "build_tiny_img2img_pipeline", "cache_key", "fit_square", "genie_img2img", "genie_scheduler", "genie_timesteps",
    "load_img2img_pipeline", "make_sources", "merge_manifests", "plan_hard_negatives", "projected_distances",
    "read_manifest", "run_augmentation", "select_noise_ratio", "shard",
]
