"""`lowres-vision eval RUN`: evaluate the trained parameters of a run directory."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained run on its test (or val) split",
        description="Rebuilds the model from RUN/config.json, loads the parameters train selected (RUN/best.safetensors, "
                    "or RUN/trainable.safetensors with select=last; of the same run), evaluates them on one split and writes RUN/metrics-<split>.json and RUN/predictions-<split>.npz; "
                    "the other splits' results stay.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory written by `lowres-vision train --out RUN`")
    parser.add_argument("--split", choices=("val", "test"), default=None, help="split to evaluate (default: the run's eval_split)")
    parser.add_argument("--data-root", default=None, help="where the data is now, if it moved since training")
    parser.add_argument("--device", default=None, help="'cpu', 'cuda', 'cuda:N' (default: the run's)")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="images per forward (default: the run's)")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_config
    from ..training import evaluate
    from ..training.run_directory import read_run_config

    overrides = {"out": args.run, "eval_split": args.split, "data_root": args.data_root, "device": args.device,
                 "eval_batch_size": args.eval_batch_size, "resume": False}
    metrics = evaluate(load_config(None, overrides, base=read_run_config(Path(args.run))[1]))
    print(json.dumps(metrics, indent=2))
    return 0
