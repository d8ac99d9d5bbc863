"""Subcommands of `lowres-vision`: each module defines `register(subparsers)`, which adds its
subparser and sets `func` (parsed args -> exit code). Heavy dependencies are imported inside `func`."""
