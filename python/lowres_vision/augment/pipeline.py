"""Loading one Stable Diffusion img2img pipeline, and the two samplers built on its shared modules.

The label-preserving/-breaking augmentations use DDIM (the LITE release) through a view of the
loaded pipeline; GeNIe drives the same modules with DPM-Solver multistep (`genie_sampler`). Only
the scheduler differs, so the UNet, VAE and text encoder are held once in memory. `fit_square`
gives each mode its release's input geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_MODEL = "tiny-random"  # the name under which the random offline pipeline is cached

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as both releases run SD 1.5), fp32 elsewhere, unless asked otherwise."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _looks_like_local_path(model: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else (absolute, ./, ~, a/b/c) can only be a path.
    return model.startswith((".", "/", "~", os.sep)) or model.count("/") > 1


def load_img2img_pipeline(model: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype=None):
    """`StableDiffusionImg2ImgPipeline.from_pretrained(model)` on `device`, SDPA attention, no safety checker.

    `model` is a hub id or a local diffusers directory. A local path that does not exist, or a model
    that cannot be loaded (offline without a cached copy, wrong layout), raises an error naming it.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser())
    elif _looks_like_local_path(model):
        raise FileNotFoundError(f"Stable Diffusion model path {model!r} does not exist")
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            model, torch_dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"could not load a Stable Diffusion img2img pipeline from {model!r} (a diffusers directory or hub id; "
            f"offline, the hub id must already be in the Hugging Face cache): {error}"
        ) from error
    return _prepare(pipe, device)


def build_tiny_img2img_pipeline(*, seed: int = 0, device: str | torch.device = "cpu", dtype=None):
    """A randomly initialised, few-hundred-kilobyte SD-shaped img2img pipeline for offline tests and demos.

    Same modules and latent layout as SD (4 latent channels, VAE downsampling by 8), with a
    character-level CLIP tokenizer over printable ASCII so that no vocabulary has to be downloaded.
    The weights are a function of `seed` alone, so images cached under `TINY_MODEL` stay valid.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    characters = [chr(code) for code in range(33, 127)]
    tokens = characters + [character + "</w>" for character in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=32, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        ))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
            sample_size=64,
        )
    # SD 1.5's noise schedule, so that strengths and GeNIe timesteps mean what they mean there.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    return _prepare(pipe if dtype == torch.float32 else pipe.to(dtype=dtype), device)


def _prepare(pipe, device: torch.device):
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = pipe.to(device)
    # Fused scaled-dot-product attention everywhere (flash / memory-efficient kernels on GPU).
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)  # the caller shows one bar over all images
    return pipe


def ddim_view(pipe):
    """A pipeline sharing `pipe`'s modules with a DDIM scheduler (the LITE release's sampler)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    components = dict(pipe.components)
    components["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config)
    view = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    view.set_progress_bar_config(disable=True)
    return view


RESIZES = ("squash", "center-crop")


def fit_square(image: Image.Image, size: int, resize: str) -> Image.Image:
    """`image` made `size`×`size` as a release feeds Stable Diffusion.

    "squash": resized to size×size whatever its aspect ratio, Lanczos (the LITE release,
    repository xiaobai1217/Low-Resource-Vision, file img2img_circuit.py). "center-crop": the
    shorter side resized to `size` (bilinear, antialiased), then the centre size×size crop (the
    GeNIe release, repository UCDvision/GeNIe, file genie.py: Resize(512), CenterCrop(512)).
    """
    from torchvision.transforms import functional as TF

    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    if resize == "squash":
        return image.resize((size, size), Image.Resampling.LANCZOS)
    return TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True), size)
