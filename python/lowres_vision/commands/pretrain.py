"""`lowres-vision pretrain`: train the project's own small CLIP from scratch on the generated corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

_HELP = {
    "steps": "optimisation steps (the budget)",
    "batch_size": "images per step, over all ranks",
    "lr": "peak AdamW learning rate (linear warm-up, cosine decay)",
    "warmup": "warm-up steps",
    "corpus_size": "training samples in the generated corpus",
    "holdout": "held-out samples after the corpus, for the final evaluation",
    "image_size": "input size (a multiple of the patch size 14)",
    "width": "image tower width", "layers": "image tower blocks", "head_width": "image tower width per head",
    "text_width": "text tower width (a multiple of 32)", "text_layers": "text tower blocks",
    "context_length": "text tokens", "embed_dim": "shared embedding size",
    "pos_embed": "image tower position embeddings: learnable (open_clip's default) or sin_cos_2d (fixed; the shipped model's)",
    "scene_share": "share of the corpus that is scenes drawn as a sketch, a photo or a model (0: none, as the shipped model)",
    "solid_share": "share of the corpus that is solids drawn as a lit block or a three-view line drawing (0: none, as the shipped model)",
    "view_weight": "weight of the image-to-image term between a scene's renderings in two styles and a solid's two views (0: off)",
    "view_temperature": "temperature of the image-to-image term",
    "restyle_weight": "weight of the image-to-image term between each image and its restyled copy (new colours or ink lines, same layout; 0: off; the shipped model: 1)",
    "checkpoint_every": "save the resumable state every N steps (0: at the end only)",
    "eval_every": "evaluate on the held-out split every N steps (0: at the end only)",
    "device": "auto, cpu, cuda or cuda:N", "workers": "data-loading worker processes",
    "threads": "torch CPU threads (0 keeps torch's default)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pretrain import PretrainConfig

    parser = subparsers.add_parser(
        "pretrain", help="train a small open_clip CLIP from scratch on a generated, captioned general image corpus",
        description="Trains an open_clip CLIP (patch-14 ViT image tower, text transformer) with open_clip's contrastive "
                    "loss on procedurally generated captioned images and writes --out: open_clip_config.json and "
                    "open_clip_model.safetensors (use --checkpoint OUT/open_clip_model.safetensors with train, eval, "
                    "zeroshot and demo, or open_clip.create_model('local-dir:OUT')), state.pt (resume with --resume), "
                    "log.jsonl and metrics.json. Deterministic per --seed; under torchrun it trains with DDP.",
    )
    defaults = PretrainConfig(out="")
    for field in dataclasses.fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "out":
            parser.add_argument(flag, required=True, help="run directory")
        elif field.name == "resume":
            parser.add_argument(flag, action="store_true", help="continue the unfinished run in --out")
        else:
            default = getattr(defaults, field.name)
            parser.add_argument(flag, type=type(default), default=default,
                                help=f"{_HELP.get(field.name, field.name)} (default {default})")
    parser.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """Errors follow `lowres_vision.cli`'s convention: a bad setting is a ConfigError (exit 2), a disk fault an OSError (exit 1)."""
    from ..pretrain import PretrainConfig, pretrain

    metrics = pretrain(PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(metrics, indent=2))
    return 0
