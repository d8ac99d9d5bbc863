"""lowres_vision: low-resource adaptation of frozen vision foundation models (LITE benchmark).

    import lowres_vision as lv
    visual, preprocess_cfg = lv.build_backbone("ViT-H-14", pretrained="laion2b_s32b_b79k")
    lv.inject(visual, tokenization=dict(sub=7, step=2), domain_attention=dict(num_maps=10),
              adapter=dict(kind="adaptformer", bottleneck=2, scale=0.1))
"""

from .models import build_backbone, inject

__all__ = ["build_backbone", "inject"]
