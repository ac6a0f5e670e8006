"""The persistent compilation cache: a second process reuses the first one's executables."""
from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from engage_jax import compile_cache

_PROGRAM = r"""
import sys, time
import jax, jax.numpy as jnp
from engage_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
assert compile_cache.enable(sys.argv[1], min_compile_seconds=0) == sys.argv[1]
f = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ y.T) @ y, x))
print(float(f(jnp.ones((64, 64)) * 0.01).sum()))
print("HIT" if "/jax/compilation_cache/cache_hits" in events else "MISS")
"""


def test_second_process_reads_the_cache(tmp_path):
  cache = tmp_path / "xla"
  run = lambda: subprocess.run([sys.executable, "-c", _PROGRAM, str(cache)], capture_output=True,
                               text=True, timeout=300)
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "nothing was written to the cache"
  assert first.stdout.split()[-1] == "MISS"
  second = run()
  assert second.returncode == 0, second.stderr[-2000:]
  assert second.stdout.split()[0] == first.stdout.split()[0]      # same result
  assert second.stdout.split()[-1] == "HIT"


def test_off_and_default(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  try:
    assert compile_cache.enable("off") is None
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.default_dir() == str(tmp_path / "c")
    assert compile_cache.enable() == str(tmp_path / "c") and (tmp_path / "c").is_dir()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_unwritable_directory_turns_the_cache_off(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  before = jax.config.jax_compilation_cache_dir
  try:
    with pytest.warns(UserWarning, match="compilation cache disabled"):
      assert compile_cache.enable(blocker / "xla") is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
