"""The command line of the config dataclasses: one option per field, its help text from the field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def base_type(tp: Any) -> Any:
    """int | None -> int; other annotations unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",") if p.strip())


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per dataclass field; defaults are suppressed so that only given flags override."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        tp = base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata['help']} [default: {_show(f.default)}]"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is tuple:
            group.add_argument(flag, type=parse_ints, metavar="N,N", **kwargs)
        else:
            group.add_argument(flag, type=tp, choices=f.metadata.get("choices"), **kwargs)


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "(none)"
    return repr(v) if isinstance(v, str) else str(v)
