"""The two kinds of value constraint the config schema declares beside its fields.

* A choice is an :class:`enum.Enum` field type. OmegaConf validates it itself, by member name, so a
  member's name is the value users type (``gate.context=running``); every choice Enum here derives
  from :class:`Choice`, whose value is that same string.
* Any other constraint (a numeric range, a list shape) is a :class:`Check` in the field's metadata,
  ``field(default=..., metadata=above(0))``; :func:`checks_of` yields them for the one loop in
  :func:`conf.schema.validate`. ``None`` passes every check (OmegaConf already allows ``None`` only
  in ``Optional`` fields), NaN fails every range (each comparison with NaN is false).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator

__all__ = ["ConfigError", "DataError", "Choice", "Check", "Interval", "above", "at_least", "below", "within", "satisfies", "checks_of"]


class ConfigError(ValueError):
    """A bad config value; the message names the key and what is allowed."""


class DataError(ValueError):
    """Bad input data: the one-line message names the file and, where there is one, the split, the
    row or line, the column and what was expected. (Here, below every layer that raises it, so that
    the command line turns it into one line and exit code 2 without importing the data modules.)"""


class Choice(str, Enum):
    """Base of the choice Enums. A ``str`` mixin whose ``str()`` is its value: a member compares equal
    to the plain string (``Context.mean == "mean"``) and prints as it, wherever one is held."""

    def __str__(self) -> str:
        return str(self.value)


class Check:
    """A constraint on one field: :meth:`ok` and ``allowed``, the text that tells what is allowed."""

    def ok(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Check):
    """``lo ≤ v`` / ``lo < v`` and ``v ≤ hi`` / ``v < hi`` (an end left ``None`` is open to infinity);
    ``note`` is appended to the allowed text, e.g. ``(0 means d/2)``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def ok(self, value: Any) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    @property
    def allowed(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class Satisfies(Check):
    """A constraint that is not an interval: a predicate and the text that describes it."""

    predicate: Callable[[Any], bool]
    allowed: str

    def ok(self, value: Any) -> bool:
        return bool(self.predicate(value))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _meta(check: Check) -> dict[str, Check]:
    return {"check": check}


def at_least(lo: float, note: str = "") -> dict[str, Check]:
    """Field metadata: ``v >= lo``."""
    return _meta(Interval(lo=lo, note=note))


def above(lo: float) -> dict[str, Check]:
    """Field metadata: ``v > lo``."""
    return _meta(Interval(lo=lo, lo_open=True))


def below(hi: float) -> dict[str, Check]:
    """Field metadata: ``v < hi``."""
    return _meta(Interval(hi=hi, hi_open=True))


def within(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> dict[str, Check]:
    """Field metadata: ``v`` in the interval from ``lo`` to ``hi`` (closed ends unless told open)."""
    return _meta(Interval(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open))


def satisfies(predicate: Callable[[Any], bool], allowed: str) -> dict[str, Check]:
    """Field metadata: ``predicate(v)``, described by ``allowed``."""
    return _meta(Satisfies(predicate, allowed))


def checks_of(schema: type, prefix: str = "", exclude: tuple[str, ...] = ()) -> Iterator[tuple[str, Check]]:
    """(dotted key, check) of every field of the dataclass ``schema`` that declares one, recursing into
    nested dataclass sections (a field whose default is a dataclass instance) except ``exclude``."""
    for f in dataclasses.fields(schema):
        if f.name in exclude:
            continue
        key = f"{prefix}{f.name}"
        if "check" in f.metadata:
            yield key, f.metadata["check"]
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                yield from checks_of(type(value), key + ".")
