"""absl apps whose every error is one line: `error: <what> (<where>)`, exit code 2.

    cli.run_app(main)   # app.run with a flag parser that turns config-file / override / flag
                        # errors into one line, and main's exceptions too (errors.guard)

ENGAGE_DEBUG=1 keeps the tracebacks.
"""
from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Sequence
import os

from absl import flags, app

from engage_jax import errors, preemption
from engage_jax.errors import InputError
from engage_jax.config_check import renamed


def _chain(exc: BaseException) -> list[BaseException]:
  out = []
  while exc is not None and exc not in out:
    out.append(exc)
    exc = exc.__cause__ or exc.__context__
  return out


def _config_path(argv: Sequence[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: Sequence[str]) -> list[str]:
  """The dotted keys of `--config.a.b=v` arguments."""
  return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def _frame_in(exc: BaseException, path: str) -> str | None:
  """'file:line' of the innermost traceback frame of `exc` inside `path`, if any."""
  want = os.path.abspath(path)
  where = None
  for fs in traceback.extract_tb(exc.__traceback__):
    if os.path.abspath(fs.filename) == want:
      where = f"{path}:{fs.lineno}"
  return where


def flag_error(exc: BaseException, argv: Sequence[str]) -> InputError:
  """The InputError of a failure while parsing the command line (config file included)."""
  cfg_path = _config_path(argv) or "--config"
  chain = _chain(exc)
  for c in chain:
    if isinstance(c, SyntaxError):
      return InputError(f"syntax error in the config file: {c.msg}", f"{c.filename or cfg_path}:{c.lineno}")
  for c in chain:
    if isinstance(c, (KeyError, AttributeError)) and _overrides(argv):
      name = str(c.args[0] if c.args else c).strip("'\"")
      key = name.split("'")[1] if "'" in name else name
      for o in _overrides(argv):
        if key in o.split("."):
          if renamed(o):
            return InputError(f"config key {o!r} was renamed to {renamed(o)!r}", f"--config.{o}")
          hint = re.search(r"[Dd]id you mean[^?]*\?", name)
          return InputError(f"unknown config key {o!r}" + (f"; {hint.group(0)}" if hint else ""),
                            f"--config.{o}")
  for c in chain:
    text = str(c)
    if isinstance(c, OSError) and "Failed loading config file" in text:
      if "No such file" in text:
        return InputError("config file not found", cfg_path)
      return InputError(f"cannot load the config file: {errors._flat(text.splitlines()[-1])}", cfg_path)
  for c in chain:
    where = _frame_in(c, cfg_path) if cfg_path != "--config" else None
    if where and not isinstance(c, flags.Error):
      return InputError(f"the config file raised {type(c).__name__}: {errors._flat(c)}", where)
  if isinstance(exc, flags.UnrecognizedFlagError):
    return InputError(f"unknown flag --{exc.flagname}", "command line")
  m = re.match(r"flag (--[^=\s]+)(?:=\S*)?: (.*)", str(exc), re.S)
  if m:
    return InputError(errors._flat(m.group(2)), m.group(1))
  return InputError(errors._flat(exc), "command line")


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flags_parser: FLAGS(argv), with any failure → one line and exit 2."""
  try:
    return flags.FLAGS(list(argv))
  except Exception as e:
    if errors.debug():
      raise
    errors.fail(flag_error(e, argv))


def stopped_line(e: preemption.Preempted) -> str:
  """The one line a launcher prints when a signal stopped it (preemption.Preempted)."""
  sig = e.args[0].split()[0]
  stage = getattr(e, "engage_stage", None)
  if stage is None:
    return f"stopped: {sig} before any stage ran; rerun the same command to resume"
  how = (f"at a safe point ({e.where}; what it had is written)" if e.at_safe_point and e.where
         else "at a safe point" if e.at_safe_point else "at once (its unfinished work is redone)")
  return f"stopped: stage {stage} stopped by {sig} {how}; rerun the same command to resume"


def run_app(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with one-line errors (parsing, usage and main's own exceptions)."""

  def _main(argv):
    try:
      return main(argv)
    except preemption.Preempted as e:
      if errors.debug():
        raise
      sys.stdout.flush()
      print(stopped_line(e), file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except app.UsageError as e:
      errors.fail(InputError(str(e), "command line"))
    except Exception as e:
      if errors.debug():
        raise
      # ml_collections reports some config-file failures only when the value is first read
      loading = any(isinstance(c, OSError) and "config file" in str(c) for c in _chain(e))
      errors.fail(flag_error(e, sys.argv) if loading else e)

  app.run(_main, flags_parser=parse_flags)
