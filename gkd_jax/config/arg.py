"""The `:arg` of `--config=FILE:arg` and of `--sweep=NAME:arg`: one parser for every config and
sweep.

An arg is a comma list of parts, each `key=value` or a bare word (a flag such as `smoke`, or the
value of the definition's positional option). A definition declares its options once:

    OPTIONS = {
        "n": Option(positive_int_or_unlimited, default=None, values="N|unlimited"),
        "smoke": flag(),
    }
    opts = parse_arg("n=2000,smoke", OPTIONS, what="arith config")  # {"n": 2000, "smoke": True}

A bad part fails naming itself and what the definition accepts; `parse_known_arg` returns the
parts it does not know instead (a sweep passes those on to its config).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Option:
    """One key of an `:arg`."""

    parse: Callable[[str], Any] = str  # the value's text -> value; ValueError says what is allowed
    default: Any = None
    values: str = "VALUE"  # what the value may be, for messages: `key=values`
    flag: bool = False  # a bare word: True when present (default False)
    required: bool = False


def flag() -> Option:
    return Option(default=False, flag=True)


def choice(
    *allowed: str,
    default: str | None = None,
    aliases: dict[str, str] | None = None,
    required: bool = False,
) -> Option:
    """One of `allowed` (or an alias of one)."""
    aliases = aliases or {}

    def parse(value: str) -> str:
        value = aliases.get(value, value)
        if value not in allowed:
            raise ValueError(f"must be one of {[*allowed, *aliases]}")
        return value

    return Option(parse, default, values="|".join(allowed), required=required)


def plus_list(item: Callable[[str], Any] = str, *, default: tuple, allowed: Sequence = ()):
    """A `+` list, e.g. `seeds=0+1+2` -> (0, 1, 2); items from `allowed` when given."""

    def parse(value: str) -> tuple:
        items = tuple(item(v) for v in value.split("+"))
        bad = [v for v in items if allowed and v not in allowed]
        if bad:
            raise ValueError(f"{bad} not in {list(allowed)}")
        return items

    return Option(parse, default, values="+".join(map(str, allowed)) if allowed else "A+B+...")


def number(default: float) -> Option:
    return Option(float, default, values="X")


def directory(default: str = "") -> Option:
    """A path, made absolute (`~` expanded)."""
    return Option(lambda v: os.path.abspath(os.path.expanduser(v)), default, values="DIR")


def positive_int_or_unlimited(value: str) -> int | None:
    """`N` (> 0) or `unlimited` (None)."""
    if value == "unlimited":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ValueError("use N (an integer > 0) or unlimited")


def usage(options: dict[str, Option]) -> str:
    return ", ".join(key if o.flag else f"{key}={o.values}" for key, o in options.items())


def parse_known_arg(
    arg: str, options: dict[str, Option], *, what: str, positional: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """(the options' values, the parts not among them, in order). A bare word that is not a
    flag is the value of option `positional` when given."""
    opts = {key: o.default for key, o in options.items()}
    rest = []
    for part in (p.strip() for p in arg.split(",")):
        key, eq, value = part.partition("=")
        option = options.get(key)
        if not part:
            continue
        if not eq and option is not None and option.flag:
            opts[key] = True
        elif not eq and positional is not None:
            opts[positional] = _value(options[positional], part, f"{what} arg part {part!r}")
        elif eq and option is not None and not option.flag:
            opts[key] = _value(option, value, f"{what} arg {key}={value!r}")
        else:
            rest.append(part)
    missing = [key for key, o in options.items() if o.required and opts[key] is None]
    if missing:
        raise ValueError(f"{what} arg {arg!r}: {missing[0]}= is required ({usage(options)})")
    return opts, rest


def parse_arg(
    arg: str, options: dict[str, Option], *, what: str, positional: str | None = None
) -> dict[str, Any]:
    """The options' values; a part that is none of them is an error naming it."""
    opts, rest = parse_known_arg(arg, options, what=what, positional=positional)
    if rest:
        key, eq, _ = rest[0].partition("=")
        unknown = f"unknown key {key!r}" if eq else "unknown"
        raise ValueError(
            f"{what} arg part {rest[0]!r}: {unknown}; it takes {usage(options)} (a comma list);"
            " set other fields with --config.FIELD=VALUE"
        )
    return opts


def _value(option: Option, text: str, where: str) -> Any:
    try:
        return option.parse(text)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
