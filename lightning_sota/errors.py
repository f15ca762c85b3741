"""The errors a user can fix. Each message names the problem and the fix in one line; the
command-line entry points print it as ``error: <message>`` and exit with status 2 (cli.py)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes by changing a setting, a path or the data: never a traceback."""


class ConfigError(UserError, ValueError):
    """An invalid setting; the message names the key and the valid range."""


class DataError(UserError, RuntimeError):
    """A problem with the dataset on disk or its download."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""
