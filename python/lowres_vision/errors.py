"""`InputError`: a mistake the user can fix (a setting, a path, a file's content).

Every setting or input check of the package raises it (or a subclass: `ConfigError`,
`DatasetFormatError`, `ImageReadError`, `RunDirectoryError`) with a message that names the setting or
file at fault. `lowres_vision.cli` prints it as one line and exits 2; see its docstring for the rest
of the convention.
"""

from __future__ import annotations


class InputError(ValueError):
    """A setting or input is invalid; the message names it and says what was expected."""
