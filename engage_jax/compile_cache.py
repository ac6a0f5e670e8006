"""JAX's persistent compilation cache, set up in one place.

Compiled XLA executables are written to a directory and reused by later processes with the same
program, shapes, jax/jaxlib version, backend and flags (JAX builds the key), so a rerun, a resumed
stage or the next test session skips most compile time (on the sandbox models about 1 s per
sampling shape, which dominates short searches). Nothing else is cached; deleting the directory
is always safe.

    from engage_jax import compile_cache
    compile_cache.enable()            # $ENGAGE_JAX_COMPILATION_CACHE or ~/.cache/engage_jax/xla
    compile_cache.enable("/some/dir") # explicit; "" or "off" disables
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

ENV = "ENGAGE_JAX_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 0.2  # cache executables that took at least this long to compile


def default_dir() -> str:
  """$ENGAGE_JAX_COMPILATION_CACHE, else $XDG_CACHE_HOME/engage_jax/xla (~/.cache/...)."""
  if ENV in os.environ:
    return os.environ[ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
  return os.path.join(base, "engage_jax", "xla")


def enable(path: str | os.PathLike | None = None,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str | None:
  """Turns the persistent cache on at `path` (default `default_dir()`) for executables that took at
  least `min_compile_seconds` to compile; "" / "off" turn it off. Returns the directory used, or
  None when off. Call before the first compilation."""
  path = default_dir() if path is None else str(path)
  if path.strip().lower() in ("", "off", "none", "0"):
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # e.g. a read-only home: run without the cache rather than fail
    warnings.warn(f"compilation cache disabled: cannot create {path}: {e}", stacklevel=2)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
  return path
