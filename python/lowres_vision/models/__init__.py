"""Frozen backbones, the baseline/adaptor injection, task heads and the FLOP/parameter accounting."""

from .adapters import ADAPTERS, AdaptFormer, LoRA, add_lora
from .backbone import CLIP_MEAN, CLIP_STD, PAPER_BACKBONES, PaperBackbone, build_backbone, build_clip, freeze, preprocess_config, tiny_clip
from .heads import ClassificationHead, EmbeddingHead
from .inject import inject
from .model import LowresModel
from .tower import InjectedBlock, OpenClipInjectedBlock, TimmInjectedBlock, Tower

__all__ = [
    "ADAPTERS", "AdaptFormer", "CLIP_MEAN", "CLIP_STD", "ClassificationHead", "EmbeddingHead", "InjectedBlock", "LoRA",
    "LowresModel", "OpenClipInjectedBlock", "PAPER_BACKBONES", "PaperBackbone", "TimmInjectedBlock", "Tower", "add_lora", "build_backbone", "build_clip",
    "freeze", "inject", "preprocess_config", "tiny_clip",
]
