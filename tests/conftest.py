"""Shared test fixtures: the real-data directory and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engage_jax import compile_cache

REPO = Path(__file__).resolve().parents[1]
compile_cache.enable()  # reruns of the suite (and the launchers it starts) reuse compiled programs


def shared_data_dir() -> Path:
  """../shared/data beside the repo (or $ENGAGE_DATA_DIR)."""
  return Path(os.environ.get("ENGAGE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture
def data_dir() -> Path:
  d = shared_data_dir()
  if not d.is_dir():
    pytest.skip(f"real data not found at {d} (set ENGAGE_DATA_DIR); skipping real-data test")
  return d
