"""Shared fixtures of the data tests: the shared data dir and a small sandbox tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
  return Path(os.environ.get("ENGAGE_DATA_DIR", REPO / ".." / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
  d = data_dir()
  if not (d / "esconv" / "train.txt").is_file() or not (d / "p4g" / "full_info.csv").is_file():
    pytest.skip(f"shared data not found at {d} (set ENGAGE_DATA_DIR)")
  return d


@pytest.fixture(scope="session")
def sandbox_tok(tmp_path_factory):
  from engage_jax.data import sandbox
  from engage_jax.data.sft import tokenizer_texts
  from engage_jax.tokenizer import train_bpe
  ds = sandbox.generate("es", 100, 0) + sandbox.generate("p4g", 100, 0)
  return train_bpe(tokenizer_texts(ds), 1024, tmp_path_factory.mktemp("tok"))
