"""GeNIe's img2img sampler: Stable Diffusion's modules driven as the authors' release drives them.

GeNIe: Generative Hard Negative Images Through Diffusion (arXiv 2312.02548); the authors' release is
the repository UCDvision/GeNIe, whose `editor.py` edits one image so:

1. encode the source image with the VAE and take its latent distribution's *mode* (not a sample),
   scaled by the VAE's scaling factor;
2. add noise at the single training timestep int(T·r) (T = 1000 training timesteps, r the noise
   ratio); for r > 0.999 the start latent is the noise alone;
3. set the DPM-Solver multistep scheduler to its usual N-step grid and run only the grid
   timesteps t with t − 1 ≤ T·r, with classifier-free guidance.

The solver is pinned to the one the release samples with (`GENIE_DPM_SOLVER`). Its `editor.py`
builds `DPMSolverMultistepScheduler.from_config` of SD 1.5's scheduler config, a PNDM config naming
none of the solver's settings, under diffusers 0.19.0 (the version its `README.md` installs), so it
samples with that version's defaults: DPM-Solver++ (2M, midpoint form), the grid
round(linspace(0, T − 1, N + 1)) reversed without its 0, first order on the first step run and,
under 15 grid steps, on the last one, and a last step that ends at timestep 0 (σ of t = 0), not at
σ = 0. Later diffusers end on σ = 0 with a first-order step by default (`final_sigmas_type="zero"`),
which changes every image, and take Karras sigmas, other spacings or solver orders from a model's
own scheduler config. The noise schedule (betas, T, prediction type) stays the model's.

The paper's text reads differently: noise r·σ_max and ⌊r·N⌋ denoising iterations, i.e. the last
⌊r·N⌋ timesteps of the grid, noised at the first of them (what diffusers' `strength` does). Both
are schedules here: "release" (the default) and "paper".
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

GENIE_SCHEDULES = ("release", "paper")
# The release's solver (diffusers 0.19.0's defaults), in the settings later diffusers offer (module docstring).
GENIE_DPM_SOLVER = {
    "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True,
    "euler_at_final": False, "final_sigmas_type": "sigma_min", "timestep_spacing": "linspace",
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
    "thresholding": False,
}


def genie_scheduler(config):
    """The release's DPM-Solver multistep scheduler over the noise schedule of the scheduler `config`."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, **GENIE_DPM_SOLVER)


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
    image does not depend on its batch. The scheduler is a fresh `genie_scheduler` over
    `pipe.scheduler`'s noise schedule, as the release replaces SD's.
    """
    if not len(images) == len(prompts) == len(generators):
        raise ValueError(f"need one prompt and one generator per image; got {len(images)} images, "
                         f"{len(prompts)} prompts, {len(generators)} generators")
    scheduler = genie_scheduler(pipe.scheduler.config)
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
