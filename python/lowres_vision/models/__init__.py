"""Frozen backbones, the baseline/adaptor injection, task heads and the FLOP/parameter accounting."""

from .adapters import AdaptFormer, LoRA, add_lora
from .backbone import CLIP_MEAN, CLIP_STD, build_backbone, build_clip, freeze, preprocess_config, tiny_clip
from .heads import ClassificationHead, EmbeddingHead
from .inject import InjectedBlock, OpenClipInjectedBlock, TimmInjectedBlock, inject
from .model import LowresModel

__all__ = [
    "AdaptFormer", "CLIP_MEAN", "CLIP_STD", "ClassificationHead", "EmbeddingHead", "InjectedBlock", "LoRA",
    "LowresModel", "OpenClipInjectedBlock", "TimmInjectedBlock", "add_lora", "build_backbone", "build_clip",
    "freeze", "inject", "preprocess_config", "tiny_clip",
]
