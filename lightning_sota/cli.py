"""What every command-line entry point shares: a problem the user can fix ends the program with
one line, ``error: <message>``, and exit status 2, never a traceback; and, for the commands that
take a run, which of its checkpoints."""

from __future__ import annotations

import argparse
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


def checkpoint_choice(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint last|best``: a run folder's last checkpoint, or the best it kept."""
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="a run folder's last checkpoint, or the best of those checkpoint.save_top_k kept",
    )
