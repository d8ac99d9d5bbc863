"""`lowres-vision plot RUN`: regenerate every applicable figure of a run directory."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw the figures of a training run",
        description="Reads trainable.safetensors (domain-attention maps, sub-kernel weights), log.jsonl (training "
                    "curves) and predictions-<split>.npz (confusion matrix or top-5 retrieval examples) from run "
                    "directories and writes PNGs.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `lowres-vision train --out RUN`")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/plots; with several runs, OUT/<run name>)")
    parser.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..plots import plot_run

    for run in args.runs:
        out = None if args.out is None else (Path(args.out) if len(args.runs) == 1 else Path(args.out) / Path(run).name)
        written = plot_run(run, out)
        if not written:
            raise InputError(f"{run}: nothing to plot (no trainable.safetensors, log.jsonl or predictions)")
        for path in written:
            print(path)
    return 0
