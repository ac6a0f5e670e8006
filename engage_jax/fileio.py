"""Atomic file writes (temp file in the same directory, fsync, os.replace) and JSON lines I/O:
a reader never sees a half-written file, and a killed writer leaves the old file or none.
Written files get the usual mode (0666 minus the umask). Under several JAX processes only
process 0 writes; the others wait at a barrier (engage_jax.multihost.main_write)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any
from collections.abc import Iterable

from engage_jax import multihost, paths


_UMASK: list[int] = []


def _umask() -> int:
  """The process umask (read once; os.umask can only be read by setting it)."""
  if not _UMASK:
    m = os.umask(0o022)
    os.umask(m)
    _UMASK.append(m)
  return _UMASK[0]


def umask_mode(path: str | os.PathLike) -> None:
  """Gives a file written by a library that creates 0600 files (safetensors) the usual mode."""
  os.chmod(path, 0o666 & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  multihost.main_write(_atomic_write_text, path, text, what=os.fspath(path))


def _atomic_write_text(path: str | os.PathLike, text: str) -> None:
  if paths.is_remote(path):
    return paths.write_text(path, text)
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; files respect the umask
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
  """Writes one JSON object per line; returns the number of rows."""
  lines = [json.dumps(r, ensure_ascii=False) for r in rows]
  atomic_write_text(path, "".join(line + "\n" for line in lines))
  return len(lines)


def read_jsonl(path: str | os.PathLike) -> list:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def line_of(raw: bytes, offset: int) -> int:
  """1-based line number of byte `offset` in `raw` (to name where a decode error is)."""
  return raw.count(b"\n", 0, offset) + 1
