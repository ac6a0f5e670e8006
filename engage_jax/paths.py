"""Workdir paths through one abstraction: `etils.epath` (what Orbax uses), so a `gs://...` workdir
reaches Cloud Storage where gcsfs / tensorflow's gfile is installed; local paths stay
`pathlib.Path` (unchanged behaviour, and what the tests cover).

    root = paths.path("gs://bucket/run")   # epath.Path
    root = paths.path("workdirs/run")      # pathlib.Path
"""
from __future__ import annotations

import os
import pathlib

from etils import epath


def is_remote(p: str | os.PathLike) -> bool:
  """True for URLs such as gs://bucket/dir (anything with a scheme)."""
  return "://" in os.fspath(p)


def path(p: str | os.PathLike):
  """`p` as a path object: epath.Path for remote URLs, pathlib.Path for local paths."""
  if is_remote(p):
    return epath.Path(os.fspath(p))
  return pathlib.Path(p)


def write_text(p: str | os.PathLike, text: str) -> None:
  """Writes a remote object in one piece (object stores replace whole objects atomically)."""
  path(p).write_text(text, encoding="utf-8")
