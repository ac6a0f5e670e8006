"""Multi-controller bookkeeping: who writes, barriers, and an optional per-process write log.

Under JAX's multi-controller runtime every process runs the same host program, so every
host-side decision (data order, tree selection, stage done / shard done) is taken by all of them
from the same inputs. Non-Orbax files are written by process 0 alone:

    multihost.main_write(fn, *args, what="report.json")
      # barrier; process 0 runs fn; the others wait, then learn whether it succeeded

Everything here is a no-op with one process (nothing imports or starts JAX for it): single-process
behaviour is unchanged. Orbax is not routed through here: every process calls it.

ENGAGE_WRITE_LOG=DIR (tests): `log_writes(DIR, root)` records every Python-level file write,
rename and removal under `root` as JSON lines in DIR/writes-<process>.jsonl (an audit hook).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from typing import Any
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from engage_jax.errors import InputError

_LOCAL = threading.local()


def active() -> bool:
  """True in a multi-process JAX program (jax.distributed initialised with > 1 process)."""
  if "jax" not in sys.modules:
    return False
  return bool(jax.distributed.is_initialized()) and jax.process_count() > 1


def process_index() -> int:
  if not active():
    return 0
  return jax.process_index()


def is_main() -> bool:
  return process_index() == 0


def barrier(name: str) -> None:
  """All processes wait here (multihost_utils.sync_global_devices); no-op with one process."""
  if active():
    multihost_utils.sync_global_devices(name)


def _broadcast_ok(ok: bool) -> bool:
  """Process 0's `ok`, on every process (a collective: also the closing barrier)."""
  return bool(multihost_utils.broadcast_one_to_all(np.int32(1 if ok else 0)))


@contextlib.contextmanager
def _writing():
  depth = getattr(_LOCAL, "depth", 0)
  _LOCAL.depth = depth + 1
  try:
    yield
  finally:
    _LOCAL.depth = depth


def in_main_write() -> bool:
  return getattr(_LOCAL, "depth", 0) > 0


def main_write(fn: Callable[..., Any], *args, what: str = "", **kwargs) -> Any:
  """Runs `fn(*args, **kwargs)` on process 0 only, between barriers; returns its result there
  (None on the others). A failure on process 0 is raised there as is and as a RuntimeError on the
  others. Nested calls (inside `fn`) run directly. One process: just `fn(...)`."""
  if not active() or in_main_write():
    return fn(*args, **kwargs)
  barrier(f"before write {what}")  # every process has done its reads of the old state
  result, error = None, None
  if is_main():
    try:
      with _writing():
        result = fn(*args, **kwargs)
    except BaseException as e:
      error = e
  if not _broadcast_ok(error is None):
    if error is not None:
      raise error
    raise RuntimeError(f"process 0 failed to write {what or 'a file'}; see its log")
  return result


def main_only(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """`fn(...)` on process 0 without barriers (appends that nobody reads back: metrics lines)."""
  return fn(*args, **kwargs) if is_main() or in_main_write() else None


def check_shared_dir(root: str | os.PathLike) -> None:
  """Process 0 writes a marker with a fresh token into `root`; every process reads it back and
  compares with process 0's token: a workdir that some processes cannot see is an error there."""
  if not active():
    return
  path = os.path.join(os.fspath(root), ".process0-marker")
  token = np.frombuffer(os.urandom(8), np.int32) if is_main() else np.zeros(2, np.int32)

  def write():  # read only after main_write's closing barrier, so a plain write is enough
    with open(path, "w", encoding="utf-8") as f:
      json.dump([int(t) for t in token], f)
  main_write(write, what="the workdir marker")  # the same barrier name on every process
  want = [int(t) for t in multihost_utils.broadcast_one_to_all(token)]
  try:
    with open(path, encoding="utf-8") as f:
      seen = json.load(f)
  except (OSError, ValueError):
    seen = None
  ok = multihost_utils.process_allgather(np.int32(seen == want))
  if not bool(np.all(ok)):
    bad = [i for i, v in enumerate(np.asarray(ok).ravel()) if not v]
    raise InputError(f"process(es) {bad} cannot see process 0's marker file: the workdir must be on a "
                     "filesystem that all processes share", f"--workdir={root}")


# ------------------------------------------------------------------ write log (tests)
_WRITE_EVENTS = ("open", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree")


def log_writes(log_dir: str, root: str) -> str:
  """Installs an audit hook that appends {"event", "path", "dst"} for each Python-level write
  under `root` to `log_dir/writes-<process>.jsonl`; returns that path. (Writes done in native
  code — tensorstore, the Rust tokenizers / safetensors libraries — are not seen; safetensors
  files are renamed into place from Python, so their final names are.)"""
  os.makedirs(log_dir, exist_ok=True)
  path = os.path.join(log_dir, f"writes-{process_index()}.jsonl")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  root = os.path.realpath(root)
  flags_w = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
  busy = threading.local()

  def under(p) -> str | None:
    try:
      p = os.path.realpath(os.fsdecode(p)) if not isinstance(p, int) else None
    except (TypeError, ValueError):
      return None
    return p if p and (p == root or p.startswith(root + os.sep)) else None

  def hook(event, args):
    if event not in _WRITE_EVENTS or getattr(busy, "on", False):
      return
    busy.on = True
    try:
      if event == "open":
        p, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                  (mode is None and isinstance(flags, int) and flags & flags_w)
        if not writing:
          return
      p = under(args[0])
      if p is None:
        return
      rec = {"event": event, "path": p, "pid": os.getpid()}
      if event == "os.rename":
        rec["dst"] = under(args[1]) or os.fsdecode(args[1])
      os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
      busy.on = False

  sys.addaudithook(hook)
  return path
