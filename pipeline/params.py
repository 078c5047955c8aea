"""Typed, documented node parameters, with units where they are natural (5s, 20ms, 16kHz, -6dB).

A `Param` is declared on a node class and maps 1:1 to a YAML key; `pipeline inspect`, the YAML
reference and the JSON schema all read these declarations, so there is one source of truth.
"""

from __future__ import annotations

import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_RE = re.compile(rf"^\s*({_NUMBER})\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "min": 60.0,
                   "m": 60.0, "h": 3600.0}
_FREQ_UNITS = {"": 1.0, "hz": 1.0, "khz": 1e3, "mhz": 1e6}
_DB_UNITS = {"": 1.0, "db": 1.0, "dbfs": 1.0}


class _Shown(reprlib.Repr):
    """reprlib, also for subclasses of list and dict (the loader's LocList, LocDict): it
    dispatches on the type's name, and would give those the full builtin repr."""

    def repr1(self, x: Any, level: int) -> str:
        for base in (list, dict, tuple, set):
            if isinstance(x, base) and type(x) is not base:
                return getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)


_SHOWN = _Shown()
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlong = 40


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it, bounded: YAML aliases can make a list of
    millions of items from a few lines (a "billion laughs"), whose full text would take
    gigabytes to build and print."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict, set, int)):
        text = _SHOWN.repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ParamValueError(ValueError):
    """A parameter value is wrong; carries the parameter name and a hint."""

    def __init__(self, param: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.hint = hint


def _with_unit(text: Any, units: dict[str, float], what: str, example: str) -> float:
    # Not the text of a list or map: one made by YAML aliases may have millions of items.
    m = None if isinstance(text, (list, tuple, dict, set)) else _UNIT_RE.match(str(text))
    if not m or m.group(2).lower() not in units:
        raise ValueError(f"'{shown(text)}' is not a {what}", f"write it like {example}")
    return float(m.group(1)) * units[m.group(2).lower()]


class Duration(float):
    """Seconds; accepts 5, 5s, 20ms, 1.5min."""

    example = "5s or 20ms"

    @classmethod
    def parse(cls, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"'{shown(value)}' is not a duration", f"write it like {cls.example}")
        if isinstance(value, (int, float)):
            return float(value)
        return _with_unit(value, _DURATION_UNITS, "duration", cls.example)


class Frequency(float):
    """Hertz; accepts 440, 440Hz, 16kHz."""

    example = "440Hz or 16kHz"

    @classmethod
    def parse(cls, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"'{shown(value)}' is not a frequency", f"write it like {cls.example}")
        if isinstance(value, (int, float)):
            return float(value)
        return _with_unit(value, _FREQ_UNITS, "frequency", cls.example)


class Decibels(float):
    """Decibels; accepts -6, -6dB, 0dBFS."""

    example = "-6dB"

    @classmethod
    def parse(cls, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"'{shown(value)}' is not a level in dB",
                             f"write it like {cls.example}")
        if isinstance(value, (int, float)):
            return float(value)
        return _with_unit(value, _DB_UNITS, "level in dB", cls.example)


class Path(str):
    """A file path, taken as written: a relative path is relative to the current folder, as
    for any command-line tool, not to the graph file's (a graph writes `${graph_dir}/...` for
    a file that travels with it)."""


_UNSET = object()  # a default not converted yet

_TYPE_NAMES = {int: "int", float: "float", str: "string", bool: "bool", list: "list",
               dict: "map", Duration: "duration", Frequency: "frequency", Decibels: "dB",
               Path: "path"}


# A unit is taken where the parameter's name says what it counts (STYLE.md: units in
# names): a rate in Hz (`rate`, `clock_rate`, `rate_hz`: 16kHz) or milliseconds (`ptime_ms`:
# 20ms, 0.5s). Elsewhere (`channels`, `tone_ms`'s neighbours) a unit means a mistake.
_MS_UNITS = {"": 1.0, "ms": 1.0, "s": 1e3, "sec": 1e3, "us": 1e-3}


def unit_of(name: str) -> str | None:
    """The unit a number parameter named `name` may be written with: "Hz", "ms" or None."""
    if name == "rate" or name.endswith(("_rate", "_hz")):
        return "Hz"
    if name.endswith("_ms"):
        return "ms"
    return None


def _number_with_unit(value: Any, unit: str | None, whole: bool) -> float:
    """A number parameter's text written with the unit its name allows ("16kHz", "20ms")."""
    what = "whole number" if whole else "number"
    if unit == "Hz":
        return _with_unit(value, _FREQ_UNITS, f"{what} of Hz",
                          "8000 or 16kHz" if whole else "440 or 16kHz")
    if unit == "ms":
        return _with_unit(value, _MS_UNITS, f"{what} of ms", "20 or 20ms")
    raise ValueError(f"'{shown(value)}' is not a {what}", f"write a {what}, without a unit"
                     if _UNIT_RE.match(str(value)) else f"write a {what}")


def _coerce(ptype: type, value: Any, unit: str | None = None) -> Any:
    if hasattr(ptype, "parse"):
        return ptype.parse(value)
    if ptype is bool:
        if isinstance(value, bool):
            return value
        if type(value) is int and value in (0, 1):  # loop=1, as "1" and YAML 1.1 users write
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"'{shown(value)}' is not a boolean",
                         "write true or false (or yes/no, on/off, 1/0)")
    if ptype is int:
        if isinstance(value, bool):
            raise ValueError(f"'{shown(value)}' is not an integer", "write a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, (float, str)):
            if isinstance(value, float):
                f = value
            else:
                try:
                    return int(value, 0)
                except ValueError:
                    pass
                try:  # a plain number YAML leaves as text (1e6) or a launch line's 2.0
                    f = float(value)
                except ValueError:
                    f = _number_with_unit(value, unit, whole=True)
            if f.is_integer():
                return int(f)
            raise ValueError(f"'{shown(value)}' is not a whole number"
                             + (f" of {unit}" if unit else ""),
                             f"write a whole number of {unit}" if unit else
                             "write a whole number")
        raise ValueError(f"'{shown(value)}' is not an integer", "write a whole number")
    if ptype is float:
        if isinstance(value, bool):
            raise ValueError(f"'{shown(value)}' is not a number", "write a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and unit is not None:
            try:
                return float(value)
            except ValueError:
                return _number_with_unit(value, unit, whole=False)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{shown(value)}' is not a number", "write a number") from None
    if ptype is str or ptype is Path:
        if isinstance(value, (dict, list)):
            raise ValueError(f"'{shown(value)}' is not a string", "write a plain value")
        return ptype(value)
    if ptype is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ValueError(f"'{shown(value)}' is not a list", "write [a, b] or a,b")
    if ptype is dict:
        if isinstance(value, dict):
            return value
        raise ValueError(f"'{shown(value)}' is not a map", "write {key: value}")
    return value


@dataclass(slots=True)
class Param:
    """A node parameter: type, default, one-line doc and limits.

    Declared as a class attribute; the node reads it as a plain instance attribute (the
    instance value shadows this non-data descriptor, so reads cost nothing on the hot path).
    """

    type: type
    default: Any = None
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    required: bool = False
    name: str = ""
    # The default as the parameter's type, converted on first use (`default` stays as the
    # plugin wrote it, "500ms", which `pipeline inspect` shows).
    _default_value: Any = field(default=_UNSET, init=False, repr=False, compare=False)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return self.default_value()

    def default_value(self) -> Any:
        """The default as a node gets it: `Param(Duration, "500ms")` gives 0.5, as the same
        text given in YAML does (raises ParamValueError where the default does not convert,
        which the registry refuses when the plugin registers)."""
        if self._default_value is _UNSET:
            self._default_value = None if self.default is None else self.convert(self.default)
        return self._default_value

    @property
    def type_name(self) -> str:
        # A custom value type may say what it is written as (SrtpPolicy: a string).
        return _TYPE_NAMES.get(self.type) or getattr(self.type, "type_name", None) or getattr(
            self.type, "__name__", str(self.type))

    def convert(self, value: Any) -> Any:
        """The value as this parameter's type, checked against its limits."""
        if value is None:  # YAML's null (`key: ~`, `key:`): the default, as if not given
            if self.required:
                raise ParamValueError(self.name, f"parameter '{self.name}' is required",
                                      f"give {self.name} a value: it has no default")
            return self.default_value()
        try:
            v = _coerce(self.type, value, unit_of(self.name))
        except ValueError as e:
            msg, hint = (e.args + (None,))[:2]
            raise ParamValueError(self.name, f"parameter '{self.name}': {msg}", hint) from None
        if isinstance(v, float) and not math.isfinite(v):  # limits cannot catch NaN
            raise ParamValueError(self.name, f"parameter '{self.name}': '{shown(value)}' is not a "
                                  "finite number", "write a number")
        if self.choices is not None and v not in self.choices:
            raise ParamValueError(
                self.name,
                f"parameter '{self.name}': '{shown(value)}' is not one of "
                + ", ".join(map(str, self.choices)),
                "pick one of the listed values",
            )
        if self.min is not None and v < self.min or self.max is not None and v > self.max:
            hint = f"use a value {self._allowed()}"
            if self._is_duration() and isinstance(value, (int, float)):
                # A plain number is seconds: 200 meant as 200ms is 200 s.
                value = f"{value:g} s"
                if (self.min is None or v / 1000 >= self.min) and (
                        self.max is None or v / 1000 <= self.max):
                    hint = f"write a unit, e.g. {v:g}ms"
            if self.min is not None and self.max is not None:
                problem = f"is out of range [{self._limits()}]"
            elif self.min is not None:  # "[0 s, ]" read as a typo: say which end it passed
                problem = f"is less than the minimum, {self._bound(self.min)}"
            else:
                problem = f"is more than the maximum, {self._bound(self.max)}"
            raise ParamValueError(self.name,
                                  f"parameter '{self.name}': {shown(value)} {problem}", hint)
        return v

    def _is_duration(self) -> bool:
        return isinstance(self.type, type) and issubclass(self.type, Duration)

    def check(self) -> None:
        """Raise ParamValueError if the declaration contradicts itself (the registry checks
        every node class's parameters when a plugin registers it)."""
        # Param("int", 3): nothing would convert to it (list[str] is list's, a type).
        if not isinstance(typing.get_origin(self.type) or self.type, type):
            raise ParamValueError(self.name, f"parameter '{self.name}': type {self.type!r} is "
                                  "not a type", "write the type itself, e.g. Param(int, 3), "
                                  "Param(Duration, \"20ms\")")
        limits = [x for x in (self.min, self.max) if x is not None]
        if limits and not (isinstance(self.type, type) and issubclass(self.type, (int, float))
                           and self.type is not bool):
            raise ParamValueError(self.name, f"parameter '{self.name}' of type "
                                  f"{self.type_name} has min/max",
                                  "min and max apply to numbers only: remove them")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in limits):
            raise ParamValueError(self.name, f"parameter '{self.name}': min/max "
                                  f"{self.min!r}, {self.max!r} are not numbers",
                                  "write them as plain numbers (seconds, Hz, dB)")
        if len(limits) == 2 and self.min > self.max:
            raise ParamValueError(self.name, f"parameter '{self.name}': min {self.min:g} is "
                                  f"greater than max {self.max:g}", "swap them")
        if self.default is None:  # no default: fine, and a required one needs none
            return
        try:
            self.default_value()  # converted once, here, for every node
        except ParamValueError as e:
            detail = e.message.removeprefix(f"parameter '{self.name}': ")
            raise ParamValueError(self.name, f"parameter '{self.name}': default {detail}",
                                  "make the default a valid value, or None") from None

    def _bound(self, v: float | None) -> str:
        if v is None:
            return ""
        # Whole numbers in full (a seed's 2**32 - 1).
        return (str(v) if isinstance(v, int) else f"{v:g}") + (
            " s" if self._is_duration() else "")

    def _limits(self) -> str:
        return f"{self._bound(self.min)}, {self._bound(self.max)}"

    def _allowed(self) -> str:
        """The values allowed, for a hint: "in [1, 64]", "of at least 0 s", "of at most 9"."""
        if self.min is not None and self.max is not None:
            return f"in [{self._limits()}]"
        if self.min is not None:
            return f"of at least {self._bound(self.min)}"
        return f"of at most {self._bound(self.max)}"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type_name, "doc": self.doc}
        d["default"] = self.default
        if self.required:
            d["required"] = True
        if self.min is not None or self.max is not None:
            d["limits"] = [self.min, self.max]
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d
