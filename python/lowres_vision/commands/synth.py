"""`lowres-vision synth`: render the synthetic LITE benchmark (LITE's on-disk layout)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..synth.plan import TASKS

    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic LITE benchmark (circuits, historic maps, mechanical drawings)",
        description="Render a deterministic, procedurally generated stand-in for the LITE benchmark, with LITE's "
                    "split sizes and on-disk layout, so the normal loaders, `train` and `eval` read it. "
                    "Same seed and scale give byte-identical files.",
    )
    parser.add_argument("--out", default=None, help="output folder (default: $LOWRES_SYNTH_DIR or ~/.cache/lowres/synth, /seed<S>)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to generate (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of LITE's split sizes, in (0, 1] (default 1)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: min(2, CPUs))")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder generated with another seed or scale")
    parser.add_argument("--samples-copy", default=None, metavar="DIR",
                        help="also copy the samples_<task>.png grids into DIR (e.g. docs/images)")
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from ..errors import InputError
    from ..synth import generate

    if not 0.0 < args.scale <= 1.0:
        raise InputError(f"--scale must be in (0, 1], got {args.scale}")
    root = generate(args.out, seed=args.seed, tasks=args.tasks, scale=args.scale, workers=args.workers, overwrite=args.overwrite)
    print(f"synthetic LITE benchmark in {root}")
    for task in args.tasks:
        sample = root / f"samples_{task}.png"
        print(f"  {task}: {root / task}  (samples: {sample})")
        if args.samples_copy:
            Path(args.samples_copy).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample, Path(args.samples_copy) / sample.name)
    return 0
