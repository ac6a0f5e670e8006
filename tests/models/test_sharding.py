"""Sharded forward on 8 forced host CPU devices equals the unsharded one (in a subprocess)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from engage_jax import sharding

REPO = Path(__file__).resolve().parents[2]


def test_sharded_forward_matches_unsharded_on_8_devices():
  proc = subprocess.run([sys.executable, "-m", "tests.models.sharded_forward_check"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "OK" in proc.stdout
  for shape in ["(8, 1, 1)", "(2, 4, 1)", "(1, 2, 4)"]:
    assert f"mesh {shape}" in proc.stdout


def test_logical_rules():
  assert sharding.logical_axes(("layers", 0, "self_attn", "q_proj", "kernel"), 2) == ("embed", "heads")
  assert sharding.logical_axes(("layers", 3, "mlp", "down_proj", "kernel"), 2) == ("mlp", "embed")
  assert sharding.logical_axes(("norm", "weight"), 1) == ("norm",)
  with pytest.raises(ValueError, match="needs 8 devices"):
    sharding.make_mesh(2, 2, 2, devices=[object()] * 4)


class _FakeMesh:
  shape = {"data": 2, "fsdp": 2, "tensor": 4}


def test_indivisible_dims_are_replicated():
  mesh = _FakeMesh()
  assert sharding.logical_to_spec(mesh, ("embed", "heads"), (64, 32)) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(mesh, ("embed", "vocab"), (64, 101)) == P("fsdp", None)
  assert sharding.logical_to_spec(mesh, ("batch", None), None) == P(("data", "fsdp"), None)
