"""What the schema's fields share: closed sets of strings (``choice``) and the common ranges."""

from __future__ import annotations

from enum import Enum
from typing import Any

from lightning_sota.config.rules import above, each, is_integer, passes, within


class Choice(str, Enum):
    """A key's closed set of values, refused by OmegaConf when it is none of them. A member is
    the string the YAML holds (``==``, ``str()``, hashing), so the code compares it as one; a
    config leaving the process (a checkpoint's) is converted with ``enum_to_str=True``."""

    def __str__(self) -> str:
        return str(self.value)


def choice(name: str, *values: str) -> Any:
    return Choice(name, {v: v for v in values}, module=__name__, qualname=name)


POSITIVE = above(0)
POSITIVE_INT = passes(lambda v: is_integer(v) and v > 0, "must be a positive integer")
FRACTION = within(0, 1)
BELOW_ONE = within(0, 1, high_open=True)  # [0, 1)
SIDE = within(0, 1, low_open=True)  # (0, 1]
SWITCH = passes(lambda v: isinstance(v, bool) or v == "auto", "use auto, true or false")
RGB = each(FRACTION, length=3)
