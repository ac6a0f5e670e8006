"""The KV-cache path (prefill + one-token steps) reproduces the full forward pass."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engage_jax.models import CausalLM, ModelConfig, llama
from tests.numerics import scaled_max_error

# Cached decode and the full forward pass are two programs summing in another order: logits agree
# to a few fp32 ulps of their scale on any x86-64 CPU (AVX2 or AVX-512); `scaled_max_error`
# (tests/numerics.py) bounds the difference absolutely for logits of order <= 1 (these seeded tiny
# models) and relative to their largest magnitude beyond, with >= 100x margin.

CONFIGS = {
    "llama_gqa": ModelConfig(vocab_size=89, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2),
    "qwen2_bias_tied": ModelConfig(model_type="qwen2", vocab_size=89, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                   attention_bias=True, tie_word_embeddings=True),
    "mistral_window": ModelConfig(model_type="mistral", vocab_size=89, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  sliding_window=5),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_then_steps_match_full_forward(name):
  config = CONFIGS[name]
  model = CausalLM(config, rngs=nnx.Rngs(3))
  rng = np.random.RandomState(0)
  b, t_prompt, steps, s = 3, 6, 5, 16
  # Left-padded prompts of lengths 6, 4 and 2, then `steps` generated tokens per row.
  lengths = np.array([6, 4, 2])
  ids = rng.randint(1, config.vocab_size, (b, t_prompt + steps))
  mask = np.ones((b, t_prompt + steps), np.int32)
  for i, n in enumerate(lengths):
    mask[i, :t_prompt - n] = 0
  ids = np.where(mask == 1, ids, 0)
  full = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))

  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  kv_mask = np.zeros((b, s), np.int32)
  kv_mask[:, :t_prompt] = mask[:, :t_prompt]
  cache = model.init_cache(b, s)
  logits, cache = model.decode(jnp.asarray(ids[:, :t_prompt]), jnp.asarray(positions[:, :t_prompt]), cache, 0,
                               jnp.asarray(kv_mask), mode="prefill")
  real = mask[:, :t_prompt].astype(bool)
  assert scaled_max_error(np.asarray(logits)[real], full[:, :t_prompt][real]) < 1e-5
  step = jax.jit(model.decode.__func__, static_argnums=())  # plain function of (model, ...)
  for i in range(t_prompt, t_prompt + steps):
    kv_mask[:, i] = 1
    logits, cache = step(model, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(positions[:, i:i + 1]), cache, i,
                         jnp.asarray(kv_mask))
    assert scaled_max_error(np.asarray(logits)[:, 0], full[:, i]) < 1e-5


def test_cache_shapes_are_head_major_with_transposed_keys():
  config = CONFIGS["llama_gqa"]
  cache = CausalLM(config, rngs=nnx.Rngs(0)).init_cache(2, 32)
  assert isinstance(cache, llama.KVCache)  # stacked over layers, scanned with them
  n = config.num_hidden_layers
  assert cache.keys.shape == (n, 2, config.num_key_value_heads, config.head_dim, 32)
  assert cache.values.shape == (n, 2, config.num_key_value_heads, 32, config.head_dim)


def test_remat_gives_the_same_loss_and_gradients():
  config = CONFIGS["llama_gqa"]
  ids = jnp.asarray(np.random.RandomState(1).randint(1, config.vocab_size, (2, 9)))

  def loss_and_grads(remat: bool):
    model = CausalLM(config, rngs=nnx.Rngs(5), remat=remat)
    loss = lambda m: jnp.mean(jax.nn.log_softmax(m(ids))[..., 3])
    return nnx.value_and_grad(loss)(model)

  (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
  # remat recomputes the same program's activations: equal up to rounding of the loss's and the
  # gradients' own scale (order <= 1 here; relative beyond)
  assert scaled_max_error(l1, l0) < 1e-6
  for a, b in zip(jax.tree.leaves(nnx.state(g0)), jax.tree.leaves(nnx.state(g1))):
    assert scaled_max_error(b, a) < 1e-6
