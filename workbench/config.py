"""Typed config sections from plain dicts (a YAML file's sections): `from_fields(cls, values, path)` builds a
dataclass and checks every value against its field's type, naming a wrong key by its full path
(`train.learning_rate: expected a number, got 'fast'`), so a bad config is refused before any work.
`@config_section` dataclasses also remember which fields were given, so a run records what the user wrote.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import numbers
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

from .errors import InputDataError


def from_fields(cls, values: Any, path: str = ""):
    """A `cls` dataclass from a dict (a YAML section), each value checked against its field's type: an
    unknown or mistyped key is refused by its full path (`train.learning_rate: expected a number, got
    'fast'`). A field may name its own parser in `metadata["parse"]` (value, path) -> value. The object
    remembers which keys were given: the run's config record lists those (see `LoopConfig.to_record`)."""
    if isinstance(values, cls):
        return values
    where = path or cls.__name__
    if not isinstance(values, dict):
        raise InputDataError(f"{where}: expected a mapping of {cls.__name__} fields, got {values!r}.",
                             f"Write {where} as `key: value` lines (fields: {', '.join(f.name for f in fields(cls))}).")
    known = {f.name: f for f in fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    typed = {}
    for key, value in values.items():
        if key not in known:
            raise InputDataError(f"{join_path(path, key)}: unknown key.", f"{where} has only: {', '.join(known)}.")
        typed[key] = field_value(known[key], hints[key], value, join_path(path, key))
    built = cls(**typed)
    built._given = tuple(values)
    check_section(built, path)
    return built


def join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def field_value(f: dataclasses.Field, hint, value, path: str):
    parse = f.metadata.get("parse")
    return parse(value, path) if parse else typed_value(value, hint, path)


def typed_value(value, hint, path: str):
    """`value` checked against the type annotation `hint` (int, float, bool, str, Optional/unions, dict[K, V],
    list[T], tuple, nested dataclasses, Any); an error names `path`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return typed_value(value, option, path)
            except InputDataError:
                continue
        raise _mistyped(value, hint, path)
    if dataclasses.is_dataclass(hint):
        return from_fields(hint, value, path)
    base = origin or hint
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _mistyped(value, hint, path)
        item = args[0] if args else Any
        return type(value)(typed_value(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if base is dict:
        if not isinstance(value, dict):
            raise _mistyped(value, hint, path)
        item = args[1] if len(args) == 2 else Any
        return {k: typed_value(v, item, join_path(path, k)) for k, v in value.items()}
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    fits = {float: number, int: number and isinstance(value, numbers.Integral), bool: isinstance(value, bool),
            str: isinstance(value, str)}.get(base, True)  # other annotations: the section's check() decides
    if not fits:
        raise _mistyped(value, hint, path)
    return value


def _describe(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    base = typing.get_origin(hint) or hint
    return {float: "a number", int: "a whole number", bool: "true or false", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(base, getattr(base, "__name__", str(base)))


def _mistyped(value, hint, path: str) -> InputDataError:
    optional = type(None) in typing.get_args(hint)
    return InputDataError(f"{path}: expected {_describe(hint)}, got {value!r}.",
                          f"Give {path} {_describe(hint)}{' (or null)' if optional else ''}, or leave it out "
                          "for its default.")


def check_section(section, path: str) -> None:
    """The section's own value checks (`check()`), with its path in front of the message."""
    check = getattr(section, "check", None)
    if check is None:
        return
    try:
        check()
    except InputDataError as exc:
        if not path or exc.problem.startswith(path):
            raise
        raise InputDataError(f"{path}: {exc.problem}", exc.fix) from None


def config_section(cls):
    """@dataclass that also remembers which fields its constructor was given (`_given`): the run's config
    record lists those, as a YAML section lists what it sets (`GenerateConfig(n_per_prompt=4)` records
    {n_per_prompt: 4}, whatever the defaults; `dataclasses.replace` gives, so records, every field)."""
    cls = dataclass(cls)
    init, names = cls.__init__, [f.name for f in fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._given = tuple(names[:len(args)]) + tuple(kwargs)

    cls.__init__ = __init__
    return cls


def given_fields(value) -> dict:
    """The fields of a section that were set: those given to its constructor or its dict, else (a class that
    does not track them, built in Python) those that differ from the defaults."""
    given = getattr(value, "_given", None)
    if given is None:
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                    for f in fields(value)}
        given = [name for name, default in defaults.items() if getattr(value, name) != default]
    return {name: given_fields(getattr(value, name)) if dataclasses.is_dataclass(getattr(value, name))
            else copy.deepcopy(getattr(value, name)) for name in given}


