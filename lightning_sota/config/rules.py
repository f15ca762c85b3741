"""The ranges beside the schema's fields (schema.py), and the walk that checks them.

OmegaConf enforces a field's type when a value is set or an interpolation resolved; what a type
cannot say (p_flip in [0, 1], a learning rate above 0, true or "auto") is a ``Check`` in the
field's metadata, run on the resolved value once the config is composed. A check returns what
the key accepts, or None when the value is fine; the walk makes that one line naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from lightning_sota.errors import ConfigError

Check = Callable[[Any], "str | None"]


def rule(check: Check, default: Any = MISSING, interpolated: bool = True) -> Any:
    """A dataclass field whose value must also pass ``check`` (a null value always passes: the
    field's type says whether it may be null). MISSING by default: the YAML option sets it.
    ``interpolated=False``: an interpolation is not resolved to be checked (it is trusted)."""
    return dataclasses.field(default=default, metadata={"check": check, "interpolated": interpolated})


def _number(value: float) -> str:
    return f"{value:g}"


def within(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    """A number in an interval: ``within(0, 1, high_open=True)`` is [0, 1)."""
    accepts = (
        f"must be in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    )

    def check(value: float) -> str | None:
        fits_low = value > low if low_open else value >= low
        fits_high = value < high if high_open else value <= high
        return None if fits_low and fits_high else accepts

    return check


def above(low: float) -> Check:
    return lambda value: None if value > low else f"must be > {_number(low)}"


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be >= {_number(low)}"


def passes(predicate: Callable[[Any], bool], accepts: str) -> Check:
    """A check from a predicate, for keys of several types (a switch: true, false or auto)."""
    return lambda value: None if predicate(value) else accepts


def is_integer(value: Any) -> bool:
    """An int, not a bool (for values no type checked: a Trainer option added with +trainer.)."""
    return isinstance(value, int) and not isinstance(value, bool)


def each(check: Check, length: int | None = None) -> Check:
    """Every item of a list passes ``check``; with ``length``, exactly that many items."""

    def check_items(values: Iterable[Any]) -> str | None:
        values = list(values)
        if length is not None and len(values) != length:
            return f"give {length} values"
        failed = next((check(v) for v in values if check(v) is not None), None)
        return f"each value {failed}" if failed else None

    return check_items


def shown(value: Any) -> str:
    """A value as it would be typed back on the command line."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _concrete(hint: Any) -> Any:
    """``X`` of ``X | None``; other hints as they are."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _is_container(hint: Any) -> bool:
    return typing.get_origin(hint) in (list, dict) or dataclasses.is_dataclass(hint)


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return {name: _concrete(hint) for name, hint in typing.get_type_hints(schema).items()}


def check_values(node: DictConfig | ListConfig, hint: Any = None, path: str = "") -> None:
    """Every check of the schemas under ``node``, whose declared type is ``hint`` (the schema a
    node was made from otherwise): in the schemas' field order, so that the root, which lists
    ``scale`` before the groups that interpolate it, names a bad value where it was typed. A
    list's items are checked with the type the schema declares for them, typed or not (the
    phases ``ls.pick`` gives). Only checked fields and fields of container types are resolved:
    the paths of a Hydra run (logger.csv.save_dir) are left alone."""
    origin = typing.get_origin(hint)
    if isinstance(node, ListConfig):
        item = typing.get_args(hint)[0] if origin is list else None
        children: list[tuple[str | int, Any]] = [(i, item) for i in range(len(node))]
    else:
        schema = hint if dataclasses.is_dataclass(hint) else OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            hints = _hints(schema)
            present = list(node.keys())  # ``in node`` is false for a key whose value is ???
            unknown = [k for k in present if k not in hints]
            if unknown and not getattr(schema, "OPEN", False):  # added with +key=: refused
                where, keys = path or "the top level", ", ".join(hints)
                raise ConfigError(f"{_join(path, unknown[0])}: no such key; {where} takes {keys}")
            _check_fields(schema, node, path)
            children = [(k, hints[k]) for k in hints if k in present] + [(k, None) for k in unknown]
        else:
            value = typing.get_args(hint)[1] if origin is dict else None
            children = [(k, value) for k in node]
    for key, child_hint in children:
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{_join(path, key)} has no value (???): give it one")
        if OmegaConf.is_interpolation(node, key) and not _is_container(child_hint):
            continue
        child = node[key]
        if isinstance(child, DictConfig | ListConfig):
            check_values(child, child_hint, _join(path, key))


def _check_fields(schema: type, node: DictConfig, path: str) -> None:
    """The checks of ``schema``'s fields, then of the optional keys an open schema lists in
    ``ADDED`` (trainer's), each on its resolved value."""
    checks = {f.name: f.metadata["check"] for f in dataclasses.fields(schema) if "check" in f.metadata}
    trusted = {f.name for f in dataclasses.fields(schema) if f.metadata.get("interpolated") is False}
    checks |= {key: check for key, check in getattr(schema, "ADDED", {}).items()}
    for key, check in checks.items():
        if key not in node or (key in trusted and OmegaConf.is_interpolation(node, key)):
            continue  # absent, ??? (said by the walk), or an interpolation trusted
        value = node[key]
        accepts = None if value is None else check(value)
        if accepts:
            raise ConfigError(f"{_join(path, key)}={shown(value)}: {accepts}")
