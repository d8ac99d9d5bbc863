"""GeNIe's img2img sampler: Stable Diffusion's modules driven as the authors' release drives them.

GeNIe: Generative Hard Negative Images Through Diffusion (arXiv 2312.02548); the authors' release is
the repository UCDvision/GeNIe, whose `editor.py` edits one image so:

1. encode the source image with the VAE and take its latent distribution's *mode* (not a sample),
   scaled by the VAE's scaling factor;
2. add noise at the single training timestep int(T·r) (T = 1000 training timesteps, r the noise
   ratio); for r > 0.999 the start latent is the noise alone;
3. set the DPM-Solver multistep scheduler to its usual N-step grid and run only the grid
   timesteps t with t − 1 ≤ T·r, with classifier-free guidance.

The paper's text reads differently: noise r·σ_max and ⌊r·N⌋ denoising iterations, i.e. the last
⌊r·N⌋ timesteps of the grid, noised at the first of them (what diffusers' `strength` does). Both
are schedules here: "release" (the default) and "paper".
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

GENIE_SCHEDULES = ("release", "paper")


def genie_timesteps(scheduler, num_inference_steps: int, noise_ratio: float,
                    schedule: str = "release") -> tuple[int, list[int]]:
    """(the timestep the source latent is noised at, the grid timesteps the UNet then runs at).

    Sets `scheduler` to its `num_inference_steps` grid, as the sampler needs. "release": noise at
    int(T·r), then the grid timesteps t with t − 1 ≤ T·r. "paper": the last ⌊r·N⌋ grid timesteps,
    noised at the first of them.
    """
    if schedule not in GENIE_SCHEDULES:
        raise ValueError(f"GeNIe schedule must be one of {GENIE_SCHEDULES}, got {schedule!r}")
    if not 0.0 < noise_ratio <= 1.0:
        raise ValueError(f"noise_ratio must be in (0, 1], got {noise_ratio}")
    scheduler.set_timesteps(num_inference_steps)
    grid = [int(t) for t in scheduler.timesteps.tolist()]
    if schedule == "paper":
        steps = int(num_inference_steps * noise_ratio)
        if steps < 1:
            raise ValueError(f"noise_ratio={noise_ratio} with {num_inference_steps} steps leaves no denoising step")
        run = grid[len(grid) - steps:]
        return run[0], run
    train_steps = scheduler.config.num_train_timesteps
    return int(train_steps * noise_ratio), [t for t in grid if t - 1 <= train_steps * noise_ratio]


def _to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> [n, 3, H, W] in [-1, 1] (the release's ToTensor + Normalize(0.5, 0.5))."""
    from torchvision.transforms.functional import pil_to_tensor

    return torch.stack([pil_to_tensor(image.convert("RGB")) for image in images]).float() / 127.5 - 1.0


@torch.inference_mode()
def genie_img2img(pipe, images: Sequence[Image.Image], prompts: Sequence[str], *, noise_ratio: float,
                  num_inference_steps: int, guidance_scale: float, generators: Sequence[torch.Generator],
                  schedule: str = "release") -> list[Image.Image]:
    """One GeNIe image per (image, prompt, generator), all at `noise_ratio`, with `pipe`'s SD modules.

    `images` are already at the generation size; `generators` (CPU) draw each image's noise, so an
    image does not depend on its batch. The scheduler is a fresh DPM-Solver multistep one built from
    `pipe.scheduler`'s config, as the release replaces SD's.
    """
    from diffusers import DPMSolverMultistepScheduler

    if not len(images) == len(prompts) == len(generators):
        raise ValueError(f"need one prompt and one generator per image; got {len(images)} images, "
                         f"{len(prompts)} prompts, {len(generators)} generators")
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    noise_timestep, timesteps = genie_timesteps(scheduler, num_inference_steps, noise_ratio, schedule)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    scaling = pipe.vae.config.scaling_factor
    latents = pipe.vae.encode(_to_pixels(images).to(device, dtype)).latent_dist.mode().float() * scaling
    noise = torch.stack([torch.randn(latents.shape[1:], generator=generator) for generator in generators]).to(device)
    if schedule == "release" and noise_ratio > 0.999:
        latents = noise
    else:
        alpha_bar = scheduler.alphas_cumprod[noise_timestep].to(device)
        latents = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    latents = latents.to(dtype)

    guided = guidance_scale > 1.0
    conditional, unconditional = pipe.encode_prompt(list(prompts), device, 1, guided)
    embeddings = torch.cat([unconditional, conditional]) if guided else conditional
    for t in timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeddings).sample
        if guided:
            unconditional_pred, conditional_pred = noise_pred.chunk(2)
            noise_pred = unconditional_pred + guidance_scale * (conditional_pred - unconditional_pred)
        latents = scheduler.step(noise_pred, t, latents).prev_sample.to(dtype)
    decoded = pipe.vae.decode(latents / scaling).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")
