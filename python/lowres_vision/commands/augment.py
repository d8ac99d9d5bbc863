"""`lowres-vision augment`: generate the diffusion augmentations of a task's training split.

Under torchrun each rank takes every world_size-th source image onto its own GPU and writes its own
manifest shard; rank 0 merges the shards at the end (or run again with `--merge-only`).
"""

from __future__ import annotations

import argparse
import os

TINY_RESOLUTION = 64  # the tiny offline pipeline's images


def register(subparsers) -> None:
    from ..augment import AugmentConfig
    from ..data import task_names

    defaults = AugmentConfig()  # the one home of every generation default
    parser = subparsers.add_parser(
        "augment", help="generate label-preserving / label-breaking / GeNIe images with Stable Diffusion img2img",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", required=True, help="root of the LITE (or ImageFolder / paired-CSV) data")
    parser.add_argument("--task", required=True, choices=task_names())
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="augmentation directory (images/, manifest.jsonl)")
    parser.add_argument("--model", default=None, help="diffusers hub id or local path (default: SD 1.5)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random pipeline and backbone (offline demos, tests)")
    parser.add_argument("--modes", default=",".join(defaults.modes), help="comma-separated subset of preserving,breaking,genie")
    parser.add_argument("--m", type=int, default=defaults.m, help="label-preserving and label-breaking images per source image")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--resolution", type=int, default=None,
                        help=f"default {defaults.resolution} ({TINY_RESOLUTION} with --tiny)")
    parser.add_argument("--preserve-strength", type=float, default=defaults.preserve_strength, help="γ")
    parser.add_argument("--break-strength", type=float, default=defaults.break_strength, help="τ")
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale,
                        help="classifier-free guidance of label-preserving/-breaking images (LITE release)")
    parser.add_argument("--resize", default=defaults.resize,
                        help="squash or center-crop: how label-preserving/-breaking inputs become square "
                             "(LITE release: squash)")
    parser.add_argument("--prompt", default=None, help="prompt template with {name} (default per task)")
    parser.add_argument("--genie-prompt", default=defaults.genie_prompt_template, help="GeNIe target-class prompt template")
    parser.add_argument("--genie-ratio", type=float, default=defaults.genie_ratio, help="GeNIe noise ratio r")
    parser.add_argument("--genie-ada", action="store_true", help="choose r per image from 0.5..0.9 (GeNIe-Ada)")
    parser.add_argument("--genie-guidance-scale", type=float, default=defaults.genie_guidance_scale, help="GeNIe's guidance (GeNIe release)")
    parser.add_argument("--genie-resize", default=defaults.genie_resize,
                        help="squash or center-crop, for GeNIe (GeNIe release: center-crop)")
    parser.add_argument("--genie-schedule", default=defaults.genie_schedule,
                        help="release: noise at int(1000 r), grid steps t - 1 <= 1000 r; paper: the last int(r steps)")
    parser.add_argument("--genie-per-class", type=int, default=None,
                        help="GeNIe images per target class (the paper's balance); default: one per source image "
                             "and other class (the GeNIe release)")
    parser.add_argument("--embedder-config", default=None,
                        help="GeNIe-Ada scores with the frozen backbone of this train config (TOML/JSON, e.g. a "
                             "run's config.json): the backbone being adapted")
    parser.add_argument("--embedder", default=None,
                        help="or with this model (open_clip name or timm:<name>; --tiny builds it tiny)")
    parser.add_argument("--embedder-pretrained", default=None, help="pretrained tag of --embedder")
    parser.add_argument("--embedder-checkpoint", default=None, help="local weights of --embedder")
    parser.add_argument("--allow-random-embedder", action="store_true",
                        help="let GeNIe-Ada score with a randomly initialised embedder (tests, demos)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=None, help="default: cuda:<LOCAL_RANK> when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default float16 on CUDA, float32 on CPU")
    parser.add_argument("--merge-only", action="store_true", help="only merge the manifest shards in --out")
    parser.set_defaults(func=run)


def _sources(args):
    from ..augment import make_sources
    from ..data import ClassificationSplit, load_split

    split = load_split(args.task, args.data_root, args.split)
    if isinstance(split, ClassificationSplit):
        class_names = dict(enumerate(split.class_names))
        names = [split.class_names[label] for label in split.labels]
        return make_sources(split.paths, split.labels, names), class_names
    if "genie" in args.modes:
        from ..errors import InputError

        raise InputError(f"--modes genie needs class names; task {args.task!r} is a retrieval task")
    # Retrieval: every distinct image that training may replace is a source of its own: both sides of a
    # symmetric split (drawing <-> render), the queries of the others (the old maps, not the satellite images).
    paths = list(dict.fromkeys([*split.query_paths, *(split.gallery_paths if split.symmetric else ())]))
    return make_sources(paths, range(len(paths)), [""] * len(paths)), {}


def _embedder_spec(args):
    """GeNIe-Ada's embedder as the flags name it (None without GeNIe-Ada); settings that do not fit are refused."""
    from ..augment.genie import EmbedderSpec
    from ..errors import InputError

    named = {"--embedder": args.embedder, "--embedder-pretrained": args.embedder_pretrained,
             "--embedder-checkpoint": args.embedder_checkpoint, "--embedder-config": args.embedder_config}
    given = [flag for flag, value in named.items() if value is not None]
    if not (args.genie_ada and "genie" in args.modes):
        if given or args.allow_random_embedder:
            raise InputError(f"{', '.join(given) or '--allow-random-embedder'}: only GeNIe-Ada (--modes genie "
                             f"--genie-ada) embeds images")
        return None
    if args.embedder_config is not None:
        if len(given) > 1:
            raise InputError(f"give --embedder-config or --embedder, not both ({', '.join(given)})")
        from ..config import load_config

        return EmbedderSpec.from_train_config(load_config(args.embedder_config))
    if args.embedder is None:
        raise InputError("GeNIe-Ada needs an embedder: --embedder-config (the train config of the backbone being "
                         "adapted) or --embedder")
    return EmbedderSpec(args.embedder, args.embedder_pretrained, args.embedder_checkpoint, tiny=args.tiny,
                        seed=args.seed)


def run(args) -> int:
    import torch

    from ..augment import AugmentConfig, build_tiny_img2img_pipeline, load_img2img_pipeline, merge_manifests
    from ..augment import run_augmentation
    from ..augment.pipeline import DEFAULT_MODEL, TINY_MODEL
    from ..data import task_spec
    from ..augment.preview import plot_examples, plot_genie_ada
    from ..config import check_device

    if args.merge_only:
        print(f"merged manifest: {merge_manifests(args.out)}")
        return 0
    args.modes = tuple(mode.strip() for mode in args.modes.split(",") if mode.strip())
    spec = _embedder_spec(args)
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(check_device(args.device))
    if device.type == "cuda" and device.index is None:  # set_device needs an index: this rank's GPU
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        import datetime

        import torch.distributed as dist

        # Only a CPU barrier before the merge is needed (gloo); ranks may finish hours apart.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    cfg = AugmentConfig(
        modes=args.modes, m=args.m, steps=args.steps, resolution=args.resolution or (TINY_RESOLUTION if args.tiny else AugmentConfig.resolution),
        preserve_strength=args.preserve_strength, break_strength=args.break_strength,
        guidance_scale=args.guidance_scale, resize=args.resize,
        prompt_template=args.prompt or task_spec(args.task).augment_prompt,
        genie_prompt_template=args.genie_prompt, genie_ratio=args.genie_ratio, genie_adaptive=args.genie_ada,
        genie_guidance_scale=args.genie_guidance_scale, genie_resize=args.genie_resize,
        genie_schedule=args.genie_schedule, genie_per_class=args.genie_per_class, batch_size=args.batch_size,
        seed=args.seed,
    )
    embedder, embedder_id = None, ""
    if spec is not None:  # before the pipeline loads: a refused embedder fails fast
        from ..augment.genie import build_embedder

        embedder = build_embedder(spec, device=device, allow_random=args.allow_random_embedder)
        embedder_id = spec.identity()
    sources, class_names = _sources(args)
    if args.tiny:
        model_id, pipe = TINY_MODEL, build_tiny_img2img_pipeline(device=device, dtype=args.dtype)
    else:
        model_id = args.model or DEFAULT_MODEL
        pipe = load_img2img_pipeline(model_id, device=device, dtype=args.dtype)
    summary = run_augmentation(pipe, sources, class_names, args.out, cfg, model_id=model_id, rank=rank,
                               world_size=world_size, embedder=embedder, embedder_id=embedder_id)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            merge_manifests(args.out)
        dist.destroy_process_group()
    if rank == 0:
        manifest = os.path.join(args.out, "manifest.jsonl")
        plot_examples(manifest, os.path.join(args.out, "examples.png"))
        plot_genie_ada(manifest, os.path.join(args.out, "genie_ada.png"))
    print(f"rank {rank}: generated {summary['generated']} images, {summary['planned']} listed in {summary['manifest']}")
    return 0
