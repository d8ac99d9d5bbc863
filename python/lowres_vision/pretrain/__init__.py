"""Pretraining the project's own small CLIP on a generated, captioned general image corpus."""

from .corpus import (DRAWING_LIKE_KINDS, KIND_WEIGHTS, SCENE_KIND, SOLID_KIND, kind_shares, render_sample, render_second_view,
                     subject_prompts)
from .trainer import MODEL_CONFIG_FILE, WEIGHTS_FILE, PretrainConfig, pretrain

__all__ = ["DRAWING_LIKE_KINDS", "KIND_WEIGHTS", "MODEL_CONFIG_FILE", "PretrainConfig", "SCENE_KIND", "SOLID_KIND",
           "WEIGHTS_FILE", "kind_shares", "pretrain", "render_sample", "render_second_view", "subject_prompts"]
