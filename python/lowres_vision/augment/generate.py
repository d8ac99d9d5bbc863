"""Planning and running the generative augmentations: batched, cached, resumable, shardable.

The kinds of image (the LITE paper, arXiv:2401.04716, Sec. 3.1; GeNIe, arXiv:2312.02548):
    preserving  m per source: img2img at strength γ (0.3) with the source's prompt, keeps the label
    breaking    m per source: img2img at strength τ (0.6), label unknown; used in the contrastive loss
    partner     its label-breaking image re-augmented at γ: the positive of that image
    genie       img2img of a source with the prompt of another class at noise ratio r, labelled with
                that class (one per (source, other class), or n per class); GeNIe-Ada generates
                r ∈ {0.5, …, 0.9} and keeps the one after the largest jump of the projected
                embedding distance

Every image is a pure function of its cache key (input file hash, kind, sampler, strength, prompt,
seed, model, steps, guidance, input geometry, resolution); a key whose image exists is never
generated again. Seeds are per image, so an image does not depend on which batch or rank produced it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data import load_image
from ..errors import InputError
from .cache import Manifest, cache_key, derive_seed, file_sha256, image_relpath, is_valid_image, merge_manifests
from .cache import shard, shard_manifest_name, write_image_atomic
from .genie import GENIE_ADA_RATIOS, Embedder, class_mean_embeddings, plan_hard_negatives, projected_distances
from .genie import select_noise_ratio
from .genie_sampler import GENIE_DPM_SOLVER, GENIE_SCHEDULES, genie_img2img
from .pipeline import RESIZES, ddim_view, fit_square

MODES = ("preserving", "breaking", "genie")


@dataclass(frozen=True)
class Source:
    """A training image: its path, label index and the class name its prompt uses."""

    path: str
    label: int
    name: str
    sha256: str


def make_sources(paths: Sequence[Path | str], labels: Sequence[int], names: Sequence[str]) -> list[Source]:
    """Sources with their content hashes; an unreadable image raises an error naming its path."""
    sources = []
    for path, label, name in zip(paths, labels, names):
        load_image(path)  # fail now, naming the file, rather than halfway through a long run
        sources.append(Source(str(path), int(label), name, file_sha256(path)))
    return sources


@dataclass(frozen=True)
class AugmentConfig:
    """What to generate and how; each mode's sampler settings default to its authors' release.

    Label-preserving, label-breaking and partner images: guidance 5.0 on an input squashed to
    `resolution`² (the LITE release, repository xiaobai1217/Low-Resource-Vision, file
    img2img_circuit.py). GeNIe: guidance 7.5 on an input resized and centre-cropped, sampled with the
    GeNIe release's schedule (`genie_sampler`; `genie_schedule="paper"` for the paper's reading), one
    image per (source image, other class) as the release plans them, or `genie_per_class` images per
    class as the paper balances them (`genie.plan_hard_negatives`). `m` counts label-preserving and
    label-breaking images per source; GeNIe's count follows its plan.
    """

    modes: tuple[str, ...] = ("preserving", "breaking")
    m: int = 10
    steps: int = 50
    resolution: int = 512
    preserve_strength: float = 0.3
    break_strength: float = 0.6
    guidance_scale: float = 5.0
    resize: str = "squash"
    prompt_template: str = "a circuit diagram of {name}"
    genie_prompt_template: str = "a photo of a {name}."
    genie_ratio: float = 0.8
    genie_adaptive: bool = False
    genie_ratios: tuple[float, ...] = GENIE_ADA_RATIOS
    genie_guidance_scale: float = 7.5
    genie_resize: str = "center-crop"
    genie_schedule: str = "release"
    genie_per_class: Optional[int] = None  # None: every source once per other class (release); n: n per class (paper)
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(MODES)
        if unknown or not self.modes:
            raise InputError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if self.m < 1 or self.batch_size < 1 or self.steps < 1 or self.resolution < 8:
            raise InputError(f"m, batch_size and steps must be >= 1 and resolution >= 8; got m={self.m}, "
                             f"batch_size={self.batch_size}, steps={self.steps}, resolution={self.resolution}")
        for name in ("preserve_strength", "break_strength"):
            strength = getattr(self, name)
            if not 0.0 < strength <= 1.0 or int(self.steps * strength) < 1:
                raise InputError(f"{name}={strength} with steps={self.steps} leaves no denoising step "
                                 f"(needs 0 < strength <= 1 and int(steps * strength) >= 1)")
        ratios = self.genie_ratios if self.genie_adaptive else (self.genie_ratio,)
        if any(not 0.0 < ratio <= 1.0 for ratio in ratios):
            raise InputError(f"GeNIe noise ratios must be in (0, 1], got {ratios}")
        if self.genie_schedule == "paper" and any(int(self.steps * ratio) < 1 for ratio in ratios):
            raise InputError(f"genie_schedule='paper' runs int(steps * r) steps: r in {ratios} with steps={self.steps} "
                             f"leaves none")
        for name, value, choices in (("resize", self.resize, RESIZES), ("genie_resize", self.genie_resize, RESIZES),
                                     ("genie_schedule", self.genie_schedule, GENIE_SCHEDULES)):
            if value not in choices:
                raise InputError(f"{name} must be one of {choices}, got {value!r}")
        if self.genie_per_class is not None and self.genie_per_class < 1:
            raise InputError(f"genie_per_class must be >= 1, got {self.genie_per_class}")
        for name in ("guidance_scale", "genie_guidance_scale"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")

    def sampler_settings(self, kind: str) -> dict:
        """The guidance, input geometry (and GeNIe schedule and solver) images of `kind` are made with."""
        if kind == "genie":
            return {"guidance_scale": self.genie_guidance_scale, "resize": self.genie_resize,
                    "schedule": self.genie_schedule, "dpm_solver": dict(GENIE_DPM_SOLVER)}
        return {"guidance_scale": self.guidance_scale, "resize": self.resize}


@dataclass
class Job:
    """One image to generate: img2img of `input_path` with `prompt` at `strength` from `seed`."""

    kind: str
    sampler: str  # "ddim" (strength = γ/τ) or "genie" (strength = noise ratio r)
    source: Source  # the dataset image this descends from
    input_path: str
    input_sha256: str
    prompt: str
    strength: float
    seed: int
    index: int
    label: int | None
    record: bool = True  # GeNIe-Ada candidates are cached but only the chosen one is listed
    extra: dict = field(default_factory=dict)


class Augmenter:
    """Generates jobs in batches with one loaded pipeline, caching images under `out_dir`."""

    def __init__(self, pipe, out_dir: Path | str, cfg: AugmentConfig, *, model_id: str,
                 manifest_name: str = "manifest.jsonl", rank: int = 0) -> None:
        self.cfg, self.model_id, self.rank = cfg, model_id, rank
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pipe, self.ddim = pipe, ddim_view(pipe)
        self.manifest = Manifest.open(self.out_dir / manifest_name)
        self.generated = 0  # images this object produced (cache hits excluded)

    def key(self, job: Job) -> str:
        return cache_key(
            input_sha256=job.input_sha256, kind=job.kind, sampler=job.sampler, strength=job.strength,
            prompt=job.prompt, seed=job.seed, model=self.model_id, steps=self.cfg.steps,
            resolution=self.cfg.resolution, **self.cfg.sampler_settings(job.kind),
        )

    def path(self, key: str) -> Path:
        return self.out_dir / image_relpath(key)

    def entry(self, job: Job, key: str) -> dict:
        return {
            "key": key, "path": image_relpath(key), "kind": job.kind, "source": job.source.path,
            "source_sha256": job.source.sha256, "source_label": job.source.label, "label": job.label,
            "prompt": job.prompt, "strength": job.strength, "seed": job.seed, "index": job.index,
            "sampler": job.sampler, "model": self.model_id, "steps": self.cfg.steps, "resolution": self.cfg.resolution,
            **self.cfg.sampler_settings(job.kind), **job.extra,
        }

    def run(self, jobs: Sequence[Job], *, desc: str = "augment") -> dict[str, Path]:
        """Makes sure every job's image exists (and is listed, if recorded); returns key -> image path."""
        pending = []
        for job in jobs:
            key = self.key(job)
            if key in self.manifest:
                continue
            if is_valid_image(self.path(key)):  # written before a crash, or by an earlier run
                if job.record:
                    self.manifest.append(self.entry(job, key))
                continue
            pending.append(job)
        # One strength and sampler per pipeline call; prompts and images may differ within it.
        groups: dict[tuple[str, float], list[Job]] = {}
        for job in pending:
            groups.setdefault((job.sampler, job.strength), []).append(job)
        with tqdm(total=len(pending), desc=desc, unit="img", disable=not pending) as bar:
            for group in groups.values():
                for start in range(0, len(group), self.cfg.batch_size):
                    batch = group[start:start + self.cfg.batch_size]
                    for job, image in zip(batch, self.generate(batch)):
                        key = self.key(job)
                        write_image_atomic(image, self.path(key))
                        self.generated += 1
                        if job.record:
                            self.manifest.append(self.entry(job, key))
                    bar.update(len(batch))
        return {self.key(job): self.path(self.key(job)) for job in jobs}

    def generate(self, batch: Sequence[Job]) -> list[Image.Image]:
        """One pipeline call for a batch sharing sampler and strength."""
        sampler, strength = batch[0].sampler, batch[0].strength
        if any((job.sampler, job.strength) != (sampler, strength) for job in batch):
            raise ValueError("a batch must share one sampler and one strength")
        settings = self.cfg.sampler_settings(batch[0].kind)
        images = [fit_square(load_image(job.input_path), self.cfg.resolution, settings["resize"]) for job in batch]
        prompts = [job.prompt for job in batch]
        # CPU generators: the initial noise of an image is the same on every device and in every batch.
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch]
        if sampler == "genie":
            return genie_img2img(self.pipe, images, prompts, noise_ratio=strength, num_inference_steps=self.cfg.steps,
                                 guidance_scale=settings["guidance_scale"], generators=generators,
                                 schedule=settings["schedule"])
        with torch.inference_mode():
            output = self.ddim(prompt=prompts, image=images, strength=strength, num_inference_steps=self.cfg.steps,
                               guidance_scale=settings["guidance_scale"], generator=generators, output_type="pil")
        return output.images


def _plan_first_pass(sources: Sequence[Source], cfg: AugmentConfig, class_names: dict[int, str],
                     hard_negatives: Sequence[tuple[Source, int, int]]) -> tuple[list[Job], list[list[Job]]]:
    """Preserving and breaking jobs of `sources`, the GeNIe jobs of `hard_negatives` (source, target,
    repeat); also the groups of GeNIe-Ada candidates (one per image)."""
    jobs: list[Job] = []
    ada_groups: list[list[Job]] = []
    for source in sources:
        prompt = cfg.prompt_template.format(name=source.name)
        base = dict(source=source, input_path=source.path, input_sha256=source.sha256, prompt=prompt)
        for index in range(cfg.m):
            if "preserving" in cfg.modes:
                jobs.append(Job(kind="preserving", sampler="ddim", strength=cfg.preserve_strength, index=index,
                                seed=derive_seed(cfg.seed, "preserving", source.sha256, index), label=source.label,
                                **base))
            if "breaking" in cfg.modes:
                jobs.append(Job(kind="breaking", sampler="ddim", strength=cfg.break_strength, index=index,
                                seed=derive_seed(cfg.seed, "breaking", source.sha256, index), label=None, **base))
    ratios = cfg.genie_ratios if cfg.genie_adaptive else (cfg.genie_ratio,)
    for source, target, index in hard_negatives:
        group = [
            Job(kind="genie", sampler="genie", source=source, input_path=source.path, input_sha256=source.sha256,
                prompt=cfg.genie_prompt_template.format(name=class_names[target]), strength=ratio, index=index,
                seed=derive_seed(cfg.seed, "genie", source.sha256, target, index), label=target,
                record=not cfg.genie_adaptive, extra={"noise_ratio": ratio, "label_name": class_names[target]})
            for ratio in ratios
        ]
        jobs.extend(group)
        if cfg.genie_adaptive:
            ada_groups.append(group)
    return jobs, ada_groups


def _partner_jobs(augmenter: Augmenter, breaking: Sequence[Job]) -> list[Job]:
    cfg = augmenter.cfg
    jobs = []
    for job in breaking:
        key = augmenter.key(job)
        path = augmenter.path(key)
        jobs.append(replace(
            job, kind="partner", strength=cfg.preserve_strength, input_path=str(path),
            input_sha256=file_sha256(path), seed=derive_seed(cfg.seed, "partner", key), extra={"partner_of": key},
        ))
    return jobs


def _select_adaptive(augmenter: Augmenter, groups: Sequence[list[Job]], all_sources: Sequence[Source],
                     embedder: Embedder, embedder_id: str) -> None:
    """GeNIe-Ada: lists, per (source, target, index), the candidate right after the largest jump."""
    todo = []
    for group in groups:
        candidate_keys = [augmenter.key(job) for job in group]
        entry_key = cache_key(kind="genie-ada", candidates=candidate_keys, embedder=embedder_id)
        if entry_key not in augmenter.manifest:
            todo.append((group, candidate_keys, entry_key))
    if not todo:
        return
    source_embeddings = F.normalize(embedder([load_image(source.path) for source in all_sources]).float(), dim=-1)
    means = class_mean_embeddings(source_embeddings, [source.label for source in all_sources])
    embedding_of = {source.sha256: embedding for source, embedding in zip(all_sources, source_embeddings)}
    ratios = [job.strength for job in todo[0][0]]
    for group, candidate_keys, entry_key in tqdm(todo, desc="GeNIe-Ada", unit="img"):
        candidates = F.normalize(embedder([load_image(augmenter.path(key)) for key in candidate_keys]).float(), dim=-1)
        distances = projected_distances(candidates, embedding_of[group[0].source.sha256], means[group[0].label])
        chosen = select_noise_ratio(ratios, distances)
        job = group[ratios.index(chosen)]
        entry = augmenter.entry(job, entry_key)
        entry.update(path=image_relpath(candidate_keys[ratios.index(chosen)]), noise_ratio=chosen, adaptive=True,
                     ratios=ratios, distances=distances.tolist(), embedder=embedder_id)
        augmenter.manifest.append(entry)


def run_augmentation(pipe, sources: Sequence[Source], class_names: dict[int, str], out_dir: Path | str,
                     cfg: AugmentConfig, *, model_id: str, rank: int = 0, world_size: int = 1,
                     embedder: Embedder | None = None, embedder_id: str = "") -> dict:
    """Generates this rank's share of the augmentations of `sources` into `out_dir`.

    Rank r takes the sources i with i % world_size == r (each source with all its images, so a
    partner is made by the rank that made its label-breaking image) and writes its own manifest
    shard; with one process the manifest is merged and partner-linked at the end. With several,
    call `merge_manifests(out_dir)` once every rank has finished.
    """
    if cfg.genie_adaptive and "genie" in cfg.modes and embedder is None:
        raise ValueError("GeNIe-Ada needs an embedder (the backbone that embeds generated images)")
    augmenter = Augmenter(pipe, out_dir, cfg, model_id=model_id, rank=rank,
                          manifest_name=shard_manifest_name(rank, world_size))
    own = shard(sources, rank, world_size)
    hard_negatives = []
    if "genie" in cfg.modes:
        # Planned over all sources (the per-class draw spans them), each rank making its own sources' images.
        plan = plan_hard_negatives([source.label for source in sources], [source.sha256 for source in sources],
                                   cfg.genie_per_class, cfg.seed)
        mine = set(own)
        hard_negatives = [(sources[position], target, index) for position, target, index in plan
                          if sources[position] in mine]
    first, ada_groups = _plan_first_pass(own, cfg, class_names, hard_negatives)
    cached_before = len(augmenter.manifest)
    augmenter.run(first, desc=f"augment[{rank}/{world_size}]")
    partners = _partner_jobs(augmenter, [job for job in first if job.kind == "breaking"])
    augmenter.run(partners, desc=f"partners[{rank}/{world_size}]")
    if ada_groups:
        _select_adaptive(augmenter, ada_groups, sources, embedder, embedder_id)
    if world_size == 1:
        merge_manifests(out_dir)
    planned = sum(job.record for job in itertools.chain(first, partners)) + len(ada_groups)
    return {"generated": augmenter.generated, "listed_before": cached_before, "planned": planned,
            "manifest": str(Path(out_dir) / shard_manifest_name(rank, world_size))}
