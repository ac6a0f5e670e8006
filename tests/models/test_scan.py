"""Scanned decoder layers: the stacked layout, the scan against a layer-by-layer loop, and a program
whose size does not grow with depth."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engage_jax.models import CausalLM, ModelConfig
from engage_jax.models import llama
from tests.numerics import scaled_max_error


def _config(layers: int) -> ModelConfig:
  return ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=2)


def test_stacked_layers_equal_a_loop_over_the_layers():
  """The scan applies layer 0, 1, 2 in order, each with its own slice of the stacked weights; the
  stacked init draws what L separately built layers draw."""
  cfg = _config(3)
  model = CausalLM(cfg, rngs=nnx.Rngs(0))
  assert model.layers.self_attn.q_proj.kernel.shape == (3, 32, 32)
  rngs = nnx.Rngs(0)
  llama._normal(rngs, (cfg.vocab_size, cfg.hidden_size), jnp.float32)  # the embedding's draw
  for i in range(3):
    one = llama.DecoderLayer(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(one.mlp.up_proj.kernel[...]),
                                  np.asarray(model.layers.mlp.up_proj.kernel[...][i]))
  ids = jnp.asarray(np.random.RandomState(0).randint(1, 64, (2, 11)))
  mask = jnp.ones((2, 11), bool)
  positions = jnp.broadcast_to(jnp.arange(11), (2, 11))
  cos, sin = llama.rope_cos_sin(positions, llama.rope_inv_freq(cfg))
  x = model.embed(ids)
  for i in range(3):
    x, _ = model.layer_slice(i)(x, cos, sin, mask)
  looped = model.logits(model.norm(x))
  assert scaled_max_error(np.asarray(model(ids)), np.asarray(looped)) < 1e-5
  reversed_order = model.embed(ids)
  for i in (2, 1, 0):
    reversed_order, _ = model.layer_slice(i)(reversed_order, cos, sin, mask)
  assert scaled_max_error(np.asarray(model(ids)), np.asarray(model.logits(model.norm(reversed_order)))) > 1e-3


def _ops(text: str) -> int:
  return sum(text.count(op) for op in ("stablehlo.dot_general", "stablehlo.exponential", "stablehlo.rsqrt"))


def test_program_size_does_not_grow_with_depth():
  """The lowered train step (loss + gradient, remat on and off) and the cached decode step hold the
  same number of matmuls / exps / rsqrts at 2 and at 6 layers: one scanned layer body."""
  counts = {}
  for layers in (2, 6):
    for remat in (False, True):
      model = CausalLM(_config(layers), rngs=nnx.Rngs(0), remat=remat)
      graphdef, params = nnx.split(model)
      ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)

      def loss(p, x):
        return jnp.mean(nnx.merge(graphdef, p)(x))  # noqa: B023 - lowered in this iteration

      text = jax.jit(jax.value_and_grad(loss)).lower(params, ids).as_text()
      counts[("train", remat, layers)] = _ops(text)

    def decode(p, x, cache):
      m = nnx.merge(graphdef, p)  # noqa: B023 - lowered in this iteration
      return m.decode(x, x, cache, 3, jnp.ones((2, 8), jnp.int32))

    cache = jax.eval_shape(lambda: model.init_cache(2, 8))  # noqa: B023
    text = jax.jit(decode).lower(params, jax.ShapeDtypeStruct((2, 1), jnp.int32), cache).as_text()
    counts[("decode", None, layers)] = _ops(text)
  for kind, remat, _ in counts:
    assert counts[(kind, remat, 2)] == counts[(kind, remat, 6)] > 0, counts


def test_unrolled_layers_give_the_scans_logits_gradients_and_cache():
  """`scan_layers=False` (an unrolled loop over the same stacked slices) computes what the scan
  computes: logits, the loss gradient of every stacked weight, and the cached decode's logits and
  cache; and its program does unroll (its matmul count grows with depth)."""
  cfg = _config(3)
  scanned = CausalLM(cfg, rngs=nnx.Rngs(0))
  looped = CausalLM(cfg, rngs=nnx.Rngs(0), scan_layers=False)
  ids = jnp.asarray(np.random.RandomState(1).randint(1, 64, (2, 9)))
  assert scaled_max_error(np.asarray(looped(ids)), np.asarray(scanned(ids))) < 1e-5
  grads = {}
  for name, model in (("scan", scanned), ("loop", looped)):
    graphdef, params = nnx.split(model)
    grads[name] = jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(ids) ** 2))(params)  # noqa: B023
  for (path, g), (_, ref) in zip(nnx.to_flat_state(grads["loop"]), nnx.to_flat_state(grads["scan"])):
    assert scaled_max_error(np.asarray(g[...]), np.asarray(ref[...])) < 1e-5, path
  outs = {}
  for name, model in (("scan", scanned), ("loop", looped)):
    cache = model.init_cache(2, 12)
    _, cache = model.decode(ids, jnp.broadcast_to(jnp.arange(9), (2, 9)), cache, 0,
                            jnp.ones((2, 12), jnp.int32).at[:, 9:].set(0), mode="prefill")
    logits, cache = model.decode(ids[:, :1], jnp.full((2, 1), 9), cache, 9, jnp.ones((2, 12), jnp.int32).at[:, 10:].set(0))
    outs[name] = (logits, cache.keys, cache.values)
  for a, b in zip(outs["loop"], outs["scan"]):
    assert scaled_max_error(np.asarray(a), np.asarray(b)) < 1e-5
  counts = []
  for layers in (2, 4):
    graphdef, params = nnx.split(CausalLM(_config(layers), rngs=nnx.Rngs(0), scan_layers=False))
    ids_s = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    counts.append(_ops(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, ids_s).as_text()))  # noqa: B023
  assert counts[1] > counts[0], counts
