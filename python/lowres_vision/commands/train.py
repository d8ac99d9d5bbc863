"""`lowres-vision train`: train the baselines on a LITE task (or report what would be trained)."""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments

    parser = subparsers.add_parser(
        "train",
        help="train baselines (sub-kernel tokenization, domain attention, adapters) or a linear probe",
        description="Trains on the task's train split and writes the run directory --out (config.json, log.jsonl, "
                    "checkpoint, trainable.safetensors, best.safetensors, metrics-<split>.json, predictions-<split>.npz; see "
                    "lowres_vision.training). Settings come from --config (JSON or TOML) and are overridden by the "
                    "flags below; --resume starts from the run's stored settings and refuses flags that would "
                    "change what it computes. Under torchrun it trains with DDP.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (TrainConfig fields)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model and print the trainable parameters each baseline adds and the GFLOPs "
                             "with and without them, without training")
    parser.add_argument("--analytic-only", action="store_true",
                        help="with --dry-run: do not build the model, print the analytic counts only (e.g. ViT-H-14)")
    add_config_arguments(parser)
    parser.set_defaults(func=run_train)


def format_report(report: dict) -> str:
    """The dry-run report as a table."""
    def number(value, digits=0):
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [f"backbone {report['backbone']} at {report['image_size']} px: "
             f"{number(report['frozen_gflops'], 3)} GFLOPs (multiply-adds) frozen"]
    header = f"{'baseline':<18}{'parameters':>14}{'measured':>14}{'GFLOPs':>12}{'change':>10}  options"
    lines += [header, "-" * len(header)]
    for row in report["baselines"]:
        change = None
        if report["frozen_gflops"] and row.get("gflops") is not None:
            change = 100 * (row["gflops"] / report["frozen_gflops"] - 1)
        lines.append(
            f"{row['baseline']:<18}{number(row.get('parameters')):>14}{number(row.get('measured_parameters')):>14}"
            f"{number(row.get('gflops'), 3):>12}{'-' if change is None else f'{change:+.2f}%':>10}  "
            f"{json.dumps(row['options'])}"
        )
    if not report["baselines"]:
        lines.append("(no baselines: a linear probe trains the head alone)")
    lines.append(f"head parameters: {number(report['head_parameters'])}; "
                 f"trainable parameters in all: {number(report['trainable_parameters'])}")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import ConfigError, config_from_args
    from ..training.run_directory import read_run_config

    # A resume starts from the run's own settings: only the flags given are compared with them.
    base = None
    if args.resume and args.out and not args.overwrite:  # (both: the settings' own error says so)
        base = {name: value for name, value in read_run_config(Path(args.out))[1].items()
                if name not in ("resume", "overwrite")}
    cfg = config_from_args(args, args.config, base=base)
    if args.analytic_only and not args.dry_run:
        raise ConfigError("--analytic-only needs --dry-run")
    from ..training import dry_run_report, train  # after the settings: their errors come fast

    if args.dry_run:
        print(format_report(dry_run_report(cfg, build=not args.analytic_only)))
        return 0
    metrics = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the metrics; one prints them
        print(json.dumps(metrics, indent=2))
    return 0
