"""Task heads that read the token sequence leaving the last transformer block ([B, N, D]).

Both heads normalise the class token (token 0) with their own LayerNorm: the per-token
LayerNorm commutes with picking a token, so "LayerNorm -> CLS" is computed as "CLS -> LayerNorm".
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _class_token(tokens: torch.Tensor, head: str) -> torch.Tensor:
    if tokens.dim() != 3:
        raise ValueError(f"{head}: expected tokens [batch, tokens, width], got shape {tuple(tokens.shape)}")
    return tokens[:, 0]


class ClassificationHead(nn.Module):
    """LayerNorm -> class token -> Linear: tokens [B, N, D] -> logits [B, K].

    The defaults are the release's trained head (a learned LayerNorm, a Linear without bias). The
    logistic-regression linear probe uses `norm_affine=False, bias=True`: the Linear then holds the
    fitted coefficients and intercepts over exactly the `features` it was fitted on.
    """

    def __init__(self, width: int, num_classes: int, *, bias: bool = False, norm_affine: bool = True) -> None:
        super().__init__()
        if width <= 0 or num_classes <= 0:
            raise ValueError(f"ClassificationHead: width and num_classes must be positive, got {width}, {num_classes}")
        self.norm = nn.LayerNorm(width, elementwise_affine=norm_affine)
        self.linear = nn.Linear(width, num_classes, bias=bias)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the Linear reads: the layer-normed class token [B, D]."""
        return self.norm(_class_token(tokens, "ClassificationHead"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(tokens))


class EmbeddingHead(nn.Module):
    """LayerNorm -> class token -> optional Linear without bias -> L2 normalisation, for retrieval.

    `EmbeddingHead.from_visual(visual)` copies an open_clip tower's `ln_post` and `proj`, so the
    head starts from exactly the frozen model's image embedding (normalised).
    """

    def __init__(self, width: int, embed_dim: Optional[int] = None) -> None:
        super().__init__()
        if width <= 0 or (embed_dim is not None and embed_dim <= 0):
            raise ValueError(f"EmbeddingHead: width and embed_dim must be positive, got {width}, {embed_dim}")
        self.norm = nn.LayerNorm(width)
        self.projection = None if embed_dim is None else nn.Linear(width, embed_dim, bias=False)

    @classmethod
    def from_visual(cls, visual: nn.Module) -> "EmbeddingHead":
        """Copies (does not share) the final LayerNorm and projection of an open_clip VisionTransformer."""
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok":
            raise ValueError(
                "EmbeddingHead.from_visual: expected an open_clip VisionTransformer with class-token pooling "
                f"and no attention pooling, got {type(visual).__name__}"
            )
        proj = visual.proj  # [width, embed_dim]; pooled @ proj is Linear with weight proj.T
        head = cls(visual.ln_post.normalized_shape[0], None if proj is None else proj.shape[1])
        head.to(device=visual.ln_post.weight.device, dtype=visual.ln_post.weight.dtype)
        head.norm.eps = visual.ln_post.eps
        with torch.no_grad():
            head.norm.load_state_dict(visual.ln_post.state_dict())
            if proj is not None:
                head.projection.weight.copy_(proj.t())
        return head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(_class_token(tokens, "EmbeddingHead"))
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled, dim=-1)
