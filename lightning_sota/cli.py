"""What every command-line entry point shares: a problem the user can fix ends the program with
one line, ``error: <message>``, and exit status 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from .errors import UserError

T = TypeVar("T")


def one_line_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Wraps an entry point: a UserError is printed as one line on stderr, then exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            # One write, so one syscall: under DDP the ranks share this stderr, and print()'s
            # separate newline could let two ranks' lines run into one.
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(2)

    return wrapper
