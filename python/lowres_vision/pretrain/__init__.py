"""Pretraining the project's own small CLIP on a generated, captioned general image corpus."""

from .corpus import DRAWING_LIKE_KINDS, KIND_WEIGHTS, render_sample, subject_prompts
from .trainer import MODEL_CONFIG_FILE, WEIGHTS_FILE, PretrainConfig, pretrain

__all__ = ["DRAWING_LIKE_KINDS", "KIND_WEIGHTS", "MODEL_CONFIG_FILE", "PretrainConfig", "WEIGHTS_FILE",
           "pretrain", "render_sample", "subject_prompts"]
