"""Orbax checkpoints: round trip, keep-last-K, wrong shape refused naming the parameter, HF export."""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from engage_jax import checkpoint, models
from engage_jax.models import CausalLM, ModelConfig
from tests.numerics import scaled_max_error


def _model(d=32, seed=0):
  cfg = ModelConfig(vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)
  return CausalLM(cfg, rngs=nnx.Rngs(seed))


def test_round_trip_keep_last_and_refuse_wrong_shape(tmp_path):
  model = _model()
  params = nnx.state(model, nnx.Param)
  tx = optax.adamw(1e-3)
  opt = tx.init(params)
  opt = jax.tree.map(lambda x: x + 1, opt)
  mgr = checkpoint.CheckpointManager(str(tmp_path / "ck"), keep=2)
  for step in (1, 2, 3):
    mgr.save(step, params, opt, {"data_state": {"epoch": 0, "step": step}, "model_config": {"a": 1}})
  assert mgr.all_steps() == [2, 3]
  fresh = nnx.state(_model(seed=1), nnx.Param)
  r = checkpoint.restore_latest(str(tmp_path / "ck"), fresh, tx.init(fresh))
  assert r.step == 3 and r.meta["data_state"] == {"epoch": 0, "step": 3}
  for (pa, a), (pb, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(r.params)):
    assert pa == pb and np.array_equal(np.asarray(a[...]), np.asarray(b[...]))
  for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(r.opt_state)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(r.opt_state) == jax.tree.structure(opt)
  wrong = nnx.state(_model(d=48), nnx.Param)
  with pytest.raises(ValueError, match=r"parameter 'embed_tokens' has shape \[64, 32\] in the checkpoint but "
                                       r"\[64, 48\]"):
    checkpoint.restore_latest(str(tmp_path / "ck"), wrong)
  assert checkpoint.restore_latest(str(tmp_path / "none"), fresh) is None


def test_export_hf(tmp_path):
  model = _model(seed=3)
  mgr = checkpoint.CheckpointManager(str(tmp_path / "ck"))
  import dataclasses
  mgr.save(7, nnx.state(model, nnx.Param), optax.sgd(0.1).init(nnx.state(model, nnx.Param)),
           {"model_config": dataclasses.asdict(model.config)})
  out = checkpoint.export_hf(str(tmp_path / "ck"), str(tmp_path / "hf"))
  loaded = models.from_pretrained(out)
  ids = np.arange(10, dtype=np.int32)[None] % 64
  # the exported weights are the saved fp32 arrays; the forward passes may compile differently, so
  # logits agree to rounding of their scale (scaled_max_error: absolute for order <= 1, relative beyond)
  assert scaled_max_error(loaded(ids), model(ids)) < 1e-5


def test_per_layer_checkpoint_is_refused_with_one_line(tmp_path):
  """A checkpoint of the layout before the layers were stacked (`layers.0.self_attn...`, one
  array per layer) is refused with one line naming the layout, before Orbax reads any array."""
  model = _model()
  per_layer = []  # the old layout: the stacked [L, ...] variables split into per-layer paths
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[0] == "layers":
      per_layer += [(("layers", i) + path[1:], var.replace(var[...][i])) for i in range(var.shape[0])]
    else:
      per_layer.append((path, var))
  old = nnx.from_flat_state(per_layer)
  mgr = checkpoint.CheckpointManager(str(tmp_path / "ck"))
  mgr.save(5, old, optax.sgd(0.1).init(old))
  with pytest.raises(checkpoint.CheckpointMismatch, match=r"stored per layer \('layers\.0\.") as e:
    checkpoint.restore_latest(str(tmp_path / "ck"), nnx.state(model, nnx.Param))
  assert "\n" not in str(e.value)
