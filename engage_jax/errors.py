"""Bad-input errors and their one-line form for the command-line tools.

    raise InputError("must be in (0, 1]; got 1.5", where="config.search.agent_sampling.top_p")
    lines(exc)   # ["error: must be in (0, 1]; got 1.5 (config.search.agent_sampling.top_p)"]
    guard(main)  # runs main; any exception → those lines on stderr, exit code 2
    with naming(path): ...   # an exception inside names `path` (a UnicodeDecodeError, KeyError or
                             # sqlite3.DatabaseError does not carry its file)

`str(InputError)` is "where: what", so messages read as before when not formatted by `lines`.
`ENGAGE_DEBUG=1` makes `guard` re-raise (full traceback).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

EXIT_CODE = 2


class InputError(ValueError):
  """A bad input: `what` is wrong, `where` names the config key, flag or file:line."""

  def __init__(self, what: str, where: str = ""):
    self.what, self.where = str(what), str(where)
    super().__init__(f"{self.where}: {self.what}" if self.where else self.what)


class InputErrors(InputError):
  """Several independent problems found in one pass (`problems`: InputErrors)."""

  def __init__(self, problems: Sequence[InputError]):
    self.problems = list(problems)
    first = self.problems[0]
    more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
    super().__init__(first.what + more, first.where)
    self.args = ("; ".join(str(p) for p in self.problems),)

  def __str__(self) -> str:
    return self.args[0]


def _flat(text: str) -> str:
  return " ".join(str(text).split())


def _named(exc: BaseException) -> bool:
  return bool(getattr(exc, "engage_file", None) or (isinstance(exc, InputError) and exc.where)
              or (isinstance(exc, OSError) and exc.filename))


@contextlib.contextmanager
def naming(path):
  """Any exception raised inside that names no file of its own gets `engage_file = path`, which
  `line` shows as its place (the file of a UnicodeDecodeError, KeyError, sqlite3.DatabaseError)."""
  try:
    yield
  except Exception as e:
    if not _named(e):
      e.engage_file = str(path)
    raise


def line(exc: BaseException) -> str:
  """One 'error: <what> (<where>)' line for one exception."""
  if isinstance(exc, InputError):
    return f"error: {_flat(exc.what)}" + (f" ({_flat(exc.where)})" if exc.where else "")
  file = getattr(exc, "engage_file", None)
  at = f" ({file})" if file else ""
  if isinstance(exc, UnicodeDecodeError):
    return f"error: not valid {exc.encoding} at byte {exc.start}: {_flat(exc.reason)}{at}"
  if isinstance(exc, OSError) and exc.filename:
    what = exc.strerror or _flat(exc)
    return f"error: {_flat(what)} ({exc.filename})"
  if isinstance(exc, KeyError) and len(exc.args) == 1:
    return f"error: KeyError: {_flat(exc.args[0])}{at}"
  name = type(exc).__name__
  if file:
    return f"error: {name}: {_flat(exc)}{at}"
  stage = getattr(exc, "engage_stage", None)
  hint = "" if isinstance(exc, (ValueError, OSError, RuntimeError)) else "; ENGAGE_DEBUG=1 shows the traceback"
  where = f" (stage {stage}{hint})" if stage else (f" ({hint[2:]})" if hint else "")
  return f"error: {name}: {_flat(exc)}{where}"


def lines(exc: BaseException) -> list[str]:
  if isinstance(exc, InputErrors):
    return [line(p) for p in exc.problems]
  return [line(exc)]


def debug() -> bool:
  return os.environ.get("ENGAGE_DEBUG", "") not in ("", "0")


def fail(exc: BaseException) -> None:
  """Prints `lines(exc)` to stderr and exits with EXIT_CODE (re-raises under ENGAGE_DEBUG=1)."""
  if debug():
    raise exc
  sys.stdout.flush()
  print("\n".join(lines(exc)), file=sys.stderr, flush=True)
  sys.exit(EXIT_CODE)


def guard(fn: Callable, *args, **kwargs):
  """fn(*args, **kwargs); an exception (not SystemExit / KeyboardInterrupt) → `fail`."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:
    if debug():
      raise
    fail(e)
