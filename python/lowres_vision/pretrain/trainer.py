"""Contrastive pretraining of a small open_clip CLIP from scratch on the generated corpus.

    from lowres_vision.pretrain import PretrainConfig, pretrain
    metrics = pretrain(PretrainConfig(out="runs/clip", steps=1000))

The run directory holds what open_clip itself loads (`open_clip.create_model("local-dir:OUT")`):
`open_clip_config.json` (the model and preprocessing config) and `open_clip_model.safetensors`,
written at the end; `state.pt`, the resumable training state, written atomically every
`checkpoint_every` steps (a killed run continues with `resume=True` and gives the same weights);
`pretrain_config.json`, `log.jsonl` (one line per step, plus evaluations) and `metrics.json`.
The loss is open_clip's `ClipLoss`; under torchrun it gathers the features of every rank. With the
opt-in `view_weight` > 0, `view_loss` between each scene and its rendering in another style, and each
solid and its other view, is added; its negatives are the other pairs of the rank's share of the step.
With `restyle_weight` > 0, the same InfoNCE pairs every image with its restyled copy (`restyle.py`),
against the rank's other images.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, check_device
from ..atomic_files import write_atomic, write_json
from ..training.run_directory import save_tensors, truncate_log
from .corpus import kind_shares
from .data import CaptionedCorpus, StepBatchSampler
from .restyle import restyle
from .evaluate import evaluate_heldout

MODEL_CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
STATE_FILE = "state.pt"
STATE_FORMAT = 1
# What may differ between a run and its resumption: everything else must match.
RESUMABLE_CHANGES = ("resume", "device", "workers", "threads")
# The image tower's position embeddings (open_clip's `pos_embed_type`): learnt from a random start, open_clip's
# default and the previous shipped model's, or its fixed 2-D sine-cosine table, the shipped model's.
POSITION_EMBEDDINGS = ("learnable", "sin_cos_2d")
_RESTYLE_STREAM = 2  # keeps the restyling draws apart from the corpus's and the sampler's streams


@dataclass
class PretrainConfig:
    out: str
    steps: int = 1000
    batch_size: int = 128  # over all ranks
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    corpus_size: int = 100_000
    holdout: int = 1000  # held-out samples after the corpus, for evaluation
    image_size: int = 112
    width: int = 128
    layers: int = 4
    head_width: int = 32
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 40
    embed_dim: int = 128
    # "sin_cos_2d" (the shipped model's) gives the tower a sense of place from the first step: at its budget a learnt table
    # from a random start leaves the embedding nearly blind to where things are (README, domain_shift's place probe).
    pos_embed: str = "learnable"
    # Opt-in, an experiment towards style invariance (off in the shipped model): `scene_share` of the
    # corpus are scenes (pretrain/scenes.py), and with `view_weight` > 0 each scene's two renderings in
    # different styles are the positives of a symmetric InfoNCE over the step's scenes at `view_temperature`.
    scene_share: float = 0.0
    # Opt-in (off in the shipped model): `solid_share` of the corpus are solids (pretrain/solids.py), drawn as a lit block or
    # a three-view line drawing; with `view_weight` > 0 a solid's two views are positives of the same term as a scene's.
    solid_share: float = 0.0
    view_weight: float = 0.0
    view_temperature: float = 0.1
    # Opt-in (on in the shipped model, at 1): with `restyle_weight` > 0 every image and its restyled copy (pretrain/restyle.py: new colours, a
    # share redrawn as ink lines, the layout kept) are the positives of the image-to-image term at view_temperature.
    restyle_weight: float = 0.0
    checkpoint_every: int = 50
    eval_every: int = 0  # 0: evaluate at the end only
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    resume: bool = False

    def validate(self) -> "PretrainConfig":
        for name in ("steps", "batch_size", "corpus_size", "holdout", "image_size", "width", "layers",
                     "head_width", "text_width", "text_layers", "context_length", "embed_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "checkpoint_every", "eval_every", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        try:  # the corpus owns the rule for its opt-in shares
            kind_shares(self.scene_share, self.solid_share)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not (self.view_weight >= 0 and math.isfinite(self.view_weight)) or not self.view_temperature > 0:
            raise ConfigError(f"view_weight must be >= 0 and view_temperature > 0, got view_weight={self.view_weight}, "
                              f"view_temperature={self.view_temperature}")
        if not (self.restyle_weight >= 0 and math.isfinite(self.restyle_weight)):
            raise ConfigError(f"restyle_weight must be >= 0, got {self.restyle_weight}")
        if self.view_weight > 0 and self.scene_share == 0 and self.solid_share == 0:
            raise ConfigError(f"view_weight {self.view_weight} needs scenes or solids to pair: set scene_share or solid_share > 0")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.pos_embed not in POSITION_EMBEDDINGS:
            raise ConfigError(f"pos_embed must be one of {', '.join(POSITION_EMBEDDINGS)}, got {self.pos_embed!r}")
        if self.image_size % 14:
            raise ConfigError(f"image_size must be a multiple of the patch size 14, got {self.image_size}")
        if self.width % self.head_width or self.text_width % 32:
            raise ConfigError(f"width must be a multiple of head_width ({self.head_width}) and text_width of 32, "
                              f"got width={self.width}, text_width={self.text_width}")
        if self.batch_size > self.corpus_size:
            raise ConfigError(f"batch_size ({self.batch_size}) must not exceed corpus_size ({self.corpus_size})")
        if self.device != "auto" and not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self

    def resolved_device(self) -> str:
        return check_device(self.device)

    def model_config(self) -> dict:
        """The open_clip model config (`open_clip.model.CLIP(**model_config)`); open_clip's default position
        embedding goes unnamed, as open_clip's own configs leave it."""
        vision = {"image_size": self.image_size, "layers": self.layers, "width": self.width,
                  "head_width": self.head_width, "patch_size": 14}
        if self.pos_embed != "learnable":
            vision["pos_embed_type"] = self.pos_embed
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_width // 32, "layers": self.text_layers},
        }

    def open_clip_config(self) -> dict:
        """The `open_clip_config.json` open_clip reads from a local directory."""
        from ..models.backbone import CLIP_MEAN, CLIP_STD

        return {"model_cfg": self.model_config(),
                "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                                   "resize_mode": "shortest"}}


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on gains, biases, embeddings' positions or the temperature), as open_clip."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        exclude = parameter.ndim < 2 or "positional_embedding" in name or "class_embedding" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def view_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two renderings of the same samples: row i of `first` and of `second`
    (image features, normalised here) are positives, every other row of the other side a negative."""
    first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    logits = first @ second.T / temperature
    labels = torch.arange(first.shape[0], device=first.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def restyle_generator(cfg: PretrainConfig, step: int, rank: int) -> torch.Generator:
    """The random stream restyling rank `rank`'s images at `step`: a function of the run's seed, so a resumed run
    restyles as an uninterrupted one."""
    seed = np.random.SeedSequence([cfg.seed, _RESTYLE_STREAM, step, rank]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + torch.cos(torch.tensor(torch.pi * progress)).item())


def _check_out(cfg: PretrainConfig, out: Path) -> Optional[dict]:
    """The saved state to resume from, or None for a fresh run; refuses to overwrite or mix runs."""
    state_path, weights = out / STATE_FILE, out / WEIGHTS_FILE
    if weights.exists() and not cfg.resume:
        raise ConfigError(f"out {out} already holds a finished model ({WEIGHTS_FILE}); choose another --out")
    if not cfg.resume:
        if state_path.exists():
            raise ConfigError(f"out {out} holds an unfinished run; pass --resume to continue it")
        return None
    if not state_path.exists():
        raise ConfigError(f"resume: no {STATE_FILE} in {out}")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    saved = state["config"]
    # A setting added after the run was saved counts as its default.
    saved = {**{f.name: f.default for f in fields(PretrainConfig)}, **saved}
    changed = [f.name for f in fields(PretrainConfig)
               if f.name not in RESUMABLE_CHANGES and saved[f.name] != getattr(cfg, f.name)]
    if changed:
        raise ConfigError("resume: settings differ from the saved run: "
                          + ", ".join(f"{n} ({saved[n]!r} != {getattr(cfg, n)!r})" for n in changed))
    return state


def pretrain(cfg: PretrainConfig) -> dict:
    """Trains the CLIP of `cfg` and writes the run directory; returns the held-out metrics."""
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from ..training.distributed import init_distributed

    cfg.validate()
    out = Path(cfg.out)
    dist = init_distributed(cfg)
    state = _check_out(cfg, out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the initialisation; the data has streams of its own
    model = open_clip.model.CLIP(**cfg.model_config(), output_dict=True).to(dist.device)
    optimizer = torch.optim.AdamW(_parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start_step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        elapsed = state["seconds"]
    trained = model
    if dist.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=dist.rank, world_size=dist.world_size)

    corpus = CaptionedCorpus(cfg.seed, 0, cfg.corpus_size, cfg.image_size, cfg.context_length,
                             scene_share=cfg.scene_share, second_views=cfg.view_weight > 0, solid_share=cfg.solid_share)
    sampler = StepBatchSampler(cfg.corpus_size, cfg.batch_size, seed=cfg.seed, steps=cfg.steps, start_step=start_step,
                               rank=dist.rank, world_size=dist.world_size)
    loader = torch.utils.data.DataLoader(corpus, batch_sampler=sampler, num_workers=cfg.workers,
                                         persistent_workers=cfg.workers > 0)
    log_path = out / "log.jsonl"
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "pretrain_config.json", asdict(cfg))
        truncate_log(log_path, start_step - 1)  # records are numbered by the 0-based step they log

    def save_state(step: int) -> None:
        write_atomic(out / STATE_FILE, lambda tmp: torch.save(
            {"format": STATE_FORMAT, "step": step, "config": asdict(cfg), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "seconds": time.time() - started}, tmp))

    started = time.time() - elapsed  # wall time counts across resumptions
    model.train()
    bar = tqdm(total=cfg.steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True, disable=not dist.is_main)
    with bar, open(log_path, "a") if dist.is_main else open(os.devnull, "w") as log:
        for step, (images, tokens, *views) in enumerate(loader, start=start_step):
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            paired = views[1].nonzero().flatten() if views else torch.zeros(0, dtype=torch.long)
            batch = tokens.shape[0]
            if views:  # the second renderings ride in the same forward pass, after the batch
                images = torch.cat([images, views[0][paired]])
            if cfg.restyle_weight > 0:  # and the restyled copies after them
                restyled = restyle(images[:batch], restyle_generator(cfg, step, dist.rank))
                images = torch.cat([images, restyled])
            output = trained(images.to(dist.device), tokens.to(dist.device))
            features = output["image_features"]
            clip_loss = loss_fn(features[:batch], output["text_features"], output["logit_scale"])
            loss, pair_loss = clip_loss, None
            if len(paired) > 1:  # a single pair has no negative
                pair_loss = view_loss(features[paired.to(dist.device)], features[batch:batch + len(paired)], cfg.view_temperature)
                loss = clip_loss + cfg.view_weight * pair_loss
            restyled_loss = None
            if cfg.restyle_weight > 0:
                restyled_loss = view_loss(features[:batch], features[-batch:], cfg.view_temperature)
                loss = loss + cfg.restyle_weight * restyled_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():  # CLIP's temperature is capped at 100
                model.logit_scale.clamp_(0, torch.log(torch.tensor(100.0)).item())
            done = step + 1
            record = {"step": step, "loss": round(loss.item(), 5), "lr": lr,
                      "logit_scale": round(model.logit_scale.exp().item(), 3), "seconds": round(time.time() - started, 2)}
            if views:  # the two terms apart, and how many scenes and solids the image-to-image term paired
                record.update(clip_loss=round(clip_loss.item(), 5), pairs=len(paired),
                              view_loss=None if pair_loss is None else round(pair_loss.item(), 5))
            if restyled_loss is not None:
                record.update(clip_loss=round(clip_loss.item(), 5), restyle_loss=round(restyled_loss.item(), 5))
            if dist.is_main and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                record["heldout"] = evaluate_heldout(model, cfg, dist.device)
                model.train()
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if dist.is_main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save_state(done)
    metrics = {}
    if dist.is_main:
        metrics = evaluate_heldout(model, cfg, dist.device)
        metrics["seconds"] = round(time.time() - started, 1)
        write_json(out / MODEL_CONFIG_FILE, cfg.open_clip_config())
        save_tensors(out / WEIGHTS_FILE, model.state_dict())
        write_json(out / "metrics.json", metrics)
        save_state(cfg.steps)
    if dist.owns_group:
        torch.distributed.destroy_process_group()
    return metrics
