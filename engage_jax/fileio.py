"""Atomic file writes (temp file in the same directory, fsync, os.replace) and JSON lines I/O:
a reader never sees a half-written file, and a killed writer leaves the old file or none."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
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
