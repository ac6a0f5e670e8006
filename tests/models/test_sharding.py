"""Sharding rules: the sharded forward on 8 forced host CPU devices equals the unsharded one (in a
subprocess), every model variable matches a rule, batch helpers, and the model's activation
constraints (present only under `jax.set_mesh`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from engage_jax import sharding
from engage_jax.models import CausalLM, ModelConfig, lora

REPO = Path(__file__).resolve().parents[2]


def test_sharded_forward_matches_unsharded_on_8_devices():
  proc = subprocess.run([sys.executable, "-m", "tests.models.sharded_forward_check"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "OK" in proc.stdout
  for shape in ["(8, 1, 1)", "(2, 4, 1)", "(1, 2, 4)"]:
    assert f"mesh {shape}" in proc.stdout


def test_logical_rules():
  # decoder-layer variables are stacked [L, ...]: the layer axis has its own name, never sharded
  assert sharding.logical_axes(("layers", "self_attn", "q_proj", "kernel"), 3) == ("layers", "embed", "heads")
  assert sharding.logical_axes(("layers", "mlp", "down_proj", "kernel"), 3) == ("layers", "mlp", "embed")
  assert sharding.LOGICAL_TO_MESH["layers"] is None
  assert sharding.logical_axes(("norm", "weight"), 1) == ("norm",)
  with pytest.raises(ValueError, match="needs 8 devices"):
    sharding.make_mesh(2, 2, 2, devices=[object()] * 4)


class _FakeMesh:
  shape: ClassVar[dict[str, int]] = {"data": 2, "fsdp": 2, "tensor": 4}


def test_indivisible_dims_are_replicated():
  mesh = _FakeMesh()
  assert sharding.logical_to_spec(mesh, ("embed", "heads"), (64, 32)) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(mesh, ("embed", "vocab"), (64, 101)) == P("fsdp", None)
  assert sharding.logical_to_spec(mesh, ("batch", None), None) == P(("data", "fsdp"), None)


# ---------------------------------------------------------------------------- every path has a rule
def _tiny(**kw):
  return ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, **kw)


def _models():
  yield "plain", CausalLM(_tiny(), rngs=nnx.Rngs(0))
  yield "qwen2_bias_tied", CausalLM(_tiny(model_type="qwen2", attention_bias=True, tie_word_embeddings=True),
                                    rngs=nnx.Rngs(0))
  yield "mistral_window", CausalLM(_tiny(model_type="mistral", sliding_window=8), rngs=nnx.Rngs(0))
  all_targets = lora.apply_lora(CausalLM(_tiny(attention_bias=True), rngs=nnx.Rngs(0)),
                                lora.LoraConfig(rank=2, alpha=4.0), rngs=nnx.Rngs(1))
  yield "lora_all_targets", all_targets


def test_every_model_variable_matches_a_rule():
  seen = set()
  for name, model in _models():
    flat = list(nnx.to_flat_state(nnx.state(model)))
    assert flat, name
    for path, var in flat:
      assert isinstance(var, nnx.Param), (name, path, type(var))  # LoRAParam is a Param subclass
      axes = sharding.logical_axes(path, var.ndim)                  # raises if no rule matches
      assert len(axes) == var.ndim
      seen.add(type(var).__name__)
    sharding.state_sharding(_one_device_mesh(), nnx.state(model))  # the whole state at once
  assert seen == {"Param", "LoRAParam"}


def _one_device_mesh():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def test_unknown_path_raises():
  with pytest.raises(ValueError, match=r"no sharding rule .* 'layers/self_attn/rope_cache'"):
    sharding.logical_axes(("layers", "self_attn", "rope_cache"), 2)
  with pytest.raises(ValueError, match="gives 3 axes"):
    sharding.logical_axes(("layers", "mlp", "up_proj", "kernel"), 2)


# ---------------------------------------------------------------------------- batches
def test_batch_helpers():
  mesh = _FakeMesh()
  assert sharding.batch_divisor(mesh) == 4
  assert [sharding.round_to_batch(n, mesh) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]
  one = _one_device_mesh()
  assert sharding.batch_sharding(one, 3).spec == P(None, None, None)
  assert sharding.round_to_batch(7, one) == 7
  placed = sharding.place_batch({"ids": np.arange(6).reshape(2, 3), "none": None}, one)
  assert placed["none"] is None and placed["ids"].sharding.mesh == one
  np.testing.assert_array_equal(np.asarray(placed["ids"]), np.arange(6).reshape(2, 3))


class _FakeMeshWithoutFsdp:
  shape: ClassVar[dict[str, int]] = {"data": 2, "tensor": 2}


def test_batch_specs_over_data_and_fsdp():
  mesh = _FakeMesh()
  spec = lambda axes: sharding.logical_to_spec(mesh, axes)
  assert spec(("batch", None)) == P(("data", "fsdp"), None)
  assert spec((None, "batch", None)) == P(None, ("data", "fsdp"), None)  # batch_sharding(accum=True)
  assert sharding.logical_to_spec(_FakeMeshWithoutFsdp(), ("batch", None)) == P("data", None)
  assert sharding.batch_divisor(_FakeMeshWithoutFsdp()) == 2
  one = _one_device_mesh()
  assert isinstance(sharding.batch_sharding(one, 3, accum=True), NamedSharding)


# ---------------------------------------------------------------------------- activation constraints
def _forward_text(model, ids):
  graphdef, state = nnx.split(model)
  return str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids))


def test_no_mesh_no_sharding_constraint():
  config = _tiny()
  model = CausalLM(config, rngs=nnx.Rngs(0))
  ids = jnp.ones((2, 5), jnp.int32)
  assert "sharding_constraint" not in _forward_text(model, ids)
  assert "sharding_constraint" not in str(jax.make_jaxpr(
      lambda: model.forward_cached(ids, ids, model.init_cache(2, 8), 0, jnp.ones((2, 8)), mode="prefill"))())
  with jax.set_mesh(_one_device_mesh()):
    text = _forward_text(model, ids)
  # the embedding output and every layer's output [B, T, D] (one scanned layer body)
  assert text.count("sharding_constraint") == 2 and "scan[" in text
  assert "sharding_constraint" not in _forward_text(model, ids)  # the context is gone again


def test_hidden_constraint_spec():
  mesh = _FakeMesh()
  spec = sharding.logical_to_spec(mesh, sharding.HIDDEN_AXES, (8, 16, 64), sharding.ACTIVATION_TO_MESH)
  assert spec == P(("data", "fsdp"), None, None)
  spec = sharding.logical_to_spec(mesh, sharding.HIDDEN_AXES, (6, 16, 64), sharding.ACTIVATION_TO_MESH)
  assert spec == P(None, None, None)  # a batch the axes do not divide stays replicated
