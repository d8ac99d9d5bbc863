"""`lowres-vision <command>`: the command-line interface (console script `lowres_vision.cli:main`).

How every command fails (handled here, once, around the command):
    exit 2  a bad setting or input (`errors.InputError` and its subclasses, a missing or already taken
            path, argparse's own errors): one line on stderr naming the setting or file
    exit 1  an environment fault (another OSError: read-only or full disk, no permission), or an
            unexpected error: one line on stderr
    exit 130  interrupted (Ctrl-C)
With `--debug` (before or after the command) the traceback is printed as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Optional, Sequence

from .errors import InputError

COMMANDS = ("train", "eval", "zeroshot", "index", "synth", "demo", "plot", "augment", "pretrain")
DEBUG_HELP = "print the traceback of an error as well"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowres-vision",
        description="Low-resource adaptation of frozen vision foundation models (the LITE benchmark).",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lowres_vision.commands.{name}").register(subparsers)
        # SUPPRESS: a subcommand that is not given --debug keeps the top-level value.
        subparsers.choices[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def describe_error(error: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) of an error that ends a command."""
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, InputError):
        return 2, str(error)
    if isinstance(error, OSError):
        # str() of a raised-by-the-system OSError is "[Errno 30] Read-only file system: 'path'".
        message = str(error) if error.strerror is None else f"{error.strerror}: {error.filename or ''}".rstrip(": ")
        if error.filename2:
            message += f" -> {error.filename2}"
        # A path that is missing, or taken, is one the user named: a bad input.
        return (2 if isinstance(error, (FileNotFoundError, FileExistsError)) else 1), message
    return 1, f"unexpected {type(error).__name__}: {error}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as error:
        status, message = describe_error(error)
        if args.debug:
            traceback.print_exc()
        elif status == 1 and not isinstance(error, OSError):
            message += " (--debug prints the traceback)"
        print(f"lowres-vision {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
