"""`lowres-vision demo`: the whole system on the synthetic benchmark, offline, on CPU, in minutes."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import CONFIGURATIONS, DemoSettings, slug
    from ..synth.plan import TASKS

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="generate the synthetic benchmark, train the paper's configurations on it, print the results table",
        description="Generates the synthetic LITE benchmark if missing, then trains and evaluates linear probe, "
                    "AdaptFormer, + tokenization, + domain attention and + all on each task once per training seed, "
                    "runs zero-shot transfer on every task and CoRE on circuits, and writes results.md, results.json, "
                    "results.png (mean ± std over the training seeds, chance beside them) and every run's plots. "
                    "By default it adapts the CLIP this project pretrains and ships; --pretrained or --checkpoint "
                    "picks another open_clip model.",
    )
    parser.add_argument("--out", default=defaults.out, help=f"output folder (default {defaults.out})")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: the synth cache for --seed/--scale)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the synthetic data")
    parser.add_argument("--training-seeds", type=int, nargs="+", default=list(defaults.training_seeds),
                        help=f"one run per training seed and configuration (default {list(defaults.training_seeds)})")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot rows")
    parser.add_argument("--scale", type=float, default=defaults.scale, help="fraction of LITE's split sizes (default 1)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--configs", nargs="+", choices=[slug(name) for name in CONFIGURATIONS],
                        default=[slug(name) for name in CONFIGURATIONS], help="configurations to run (default: all five)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: 70 for the shipped CLIP, trained at 112; a checkpoint's own; 224 with --pretrained)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--backbone", default=defaults.backbone, help="open_clip model name, used with --pretrained/--checkpoint")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights path")
    source.add_argument("--checkpoint", default=None, help="local open_clip checkpoint file (default: the shipped CLIP)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help=f"torch CPU threads (default {defaults.threads}: up to 2, fastest for the small shipped ViT loading in the main process; 0 keeps torch's default)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"data loading worker processes per run (default {defaults.workers}: the main process loads, "
                             "through the image cache; workers bypass it)")
    parser.add_argument("--image-cache-mb", type=int, default=defaults.image_cache_mb,
                        help=f"megabytes of decoded, resized images kept across the runs (default {defaults.image_cache_mb}; "
                             "0: off); used only when the main process loads (--workers 0)")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from ..config import check_device
    from ..demo import CONFIGURATIONS, DemoSettings, run_demo, slug

    check_device(args.device)  # before the benchmark is generated, not at the first run
    by_slug = {slug(name): name for name in CONFIGURATIONS}
    settings = DemoSettings(
        out=args.out, data_root=args.data, seed=args.seed, scale=args.scale, tasks=args.tasks,
        configurations=[by_slug[s] for s in args.configs], training_seeds=args.training_seeds,
        zero_shot=not args.no_zero_shot, epochs=args.epochs, image_size=args.image_size,
        batch_size=args.batch_size, lr=args.lr, backbone=args.backbone, pretrained=args.pretrained,
        checkpoint=args.checkpoint, device=args.device, threads=args.threads or None, workers=args.workers,
        image_cache_mb=args.image_cache_mb, plots=not args.no_plots,
    )
    run_demo(settings)
    return 0
