"""Config fields: a dataclass field with its one-line doc and its range check, defined once.

    learning_rate: float = field(3e-3, "peak learning rate", Num(0.0, lo_open=True))

`field` stores `doc`, `check` and `key` in the dataclass field's metadata; engage_jax/schema.py
turns the dataclasses into the launchers' ConfigDict and runs every check on a config. A check
is a callable `check(value) -> bool` with a `what` text ("must be an integer >= 1"). This module
imports nothing of the project, so every module that defines settings can import it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

_NO_DEFAULT = object()


def field(default: Any = _NO_DEFAULT, doc: str = "", check: Check | None = None, *,
          factory: Callable[[], Any] | None = None, key: bool = True, encode: Callable[[Any], Any] | None = None):
  """A dataclass field with metadata: `doc` (one line), `check` (a range check, or None), `key`
  (False: not a config key, e.g. a value the pipeline sets from another key), `encode` (the
  value's form in a ConfigDict, e.g. a tuple as a comma-separated string). `factory`: a
  default_factory (for dataclass and other mutable defaults)."""
  meta = {"doc": doc, "check": check, "key": key, "encode": encode}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=meta)
  if default is _NO_DEFAULT:
    return dataclasses.field(metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


class Check:
  """A range check: `check(value)` → bool; `what` says what a good value is."""
  what = ""

  def __call__(self, v) -> bool:
    raise NotImplementedError


class Int(Check):
  """An integer >= lo (`note`, e.g. " (0: off)", is appended to the message)."""

  def __init__(self, lo: int, note: str = ""):
    self.lo, self.what = lo, f"must be an integer >= {lo}{note}"

  def __call__(self, v) -> bool:
    return is_int(v) and v >= self.lo


class Num(Check):
  """A finite number in [lo, hi] (either end open)."""

  def __init__(self, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
    if hi == math.inf:
      self.what = f"must be a number {'>' if lo_open else '>='} {lo:g}"
    else:
      self.what = f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

  def __call__(self, v) -> bool:
    if not is_num(v) or not math.isfinite(v):
      return False
    return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)


class OneOf(Check):
  """One of `options`."""

  def __init__(self, options: Iterable):
    self.options = tuple(options)
    self.what = f"must be one of {', '.join(map(str, self.options))}"

  def __call__(self, v) -> bool:
    return v in self.options


class Bool(Check):
  what = "must be true or false"

  def __call__(self, v) -> bool:
    return isinstance(v, bool)


class Str(Check):
  """A string (`what`: e.g. "must be a string (empty: from scratch)")."""

  def __init__(self, what: str = "must be a string"):
    self.what = what

  def __call__(self, v) -> bool:
    return isinstance(v, str)


class Optional(Check):
  """None, or a value that passes `inner`."""

  def __init__(self, inner: Check):
    self.inner, self.what = inner, f"{inner.what}, or None"

  def __call__(self, v) -> bool:
    return v is None or self.inner(v)
