"""Blocked causal self-attention and the last-position prefill against straightforward references."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from engage_jax import models
from engage_jax.models import CausalLM, ModelConfig, llama
from tests.models.hf_reference import make_hf_model
from tests.numerics import scaled_max_error

# Tolerances: two programs that compute the same function in another order (chunked vs dense
# attention, cached decode vs full forward, ours vs torch) differ by a few fp32 ulps of the values
# summed, and the ISA (AVX2 / AVX-512) only changes which ulps; every bound is `scaled_max_error`
# (tests/numerics.py): absolute for values of order <= 1 (these seeded tiny models), relative to
# the largest magnitude beyond, so it holds on any x86-64 CPU with a margin of >= 100 ulps.


def _dense_reference(q, kt, v, valid, window):
  """Unblocked numpy attention in float64: q [B, T, KV, G, hd], kt [B, KV, hd, T], v [B, KV, T, hd]."""
  q, kt, v = (np.asarray(a, np.float64) for a in (q, kt, v))
  b, t, kv, g, hd = q.shape
  scores = np.einsum("btkgd,bkds->bkgts", q, kt) / math.sqrt(hd)
  slots = np.arange(t)
  allowed = slots[None, :] <= slots[:, None]
  if window is not None:
    allowed &= slots[:, None] - slots[None, :] < window
  mask = allowed[None] & np.asarray(valid)[:, None, :]
  scores = np.where(mask[:, None, None], scores, -1e30)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum("bkgts,bksd->bkgtd", p, np.asarray(v, np.float64))
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g * hd)


@pytest.mark.parametrize("t,chunk,window", [(37, 8, None), (37, 8, 5), (16, 16, None), (20, 64, 3)])
def test_blocked_causal_attention_equals_dense(t, chunk, window):
  rng = np.random.RandomState(t + chunk)
  b, kv, g, hd = 3, 2, 2, 8
  q = rng.randn(b, t, kv, g, hd).astype(np.float32)
  kt = rng.randn(b, kv, hd, t).astype(np.float32)
  v = rng.randn(b, kv, t, hd).astype(np.float32)
  valid = np.ones((b, t), bool)
  valid[1, :9] = False   # left padding
  valid[2, t - 4:] = False  # right padding
  out = llama.causal_self_attention(jnp.asarray(q), jnp.asarray(kt), jnp.asarray(v), jnp.asarray(valid),
                                    window, jnp.float32, chunk=chunk)
  ref = _dense_reference(q, kt, v, valid, window)
  rows = valid.copy()
  rows[1, :9] = False  # fully masked queries are undefined (uniform over nothing real)
  assert scaled_max_error(np.asarray(out)[rows], ref[rows]) < 2e-5


def test_long_sequence_matches_transformers(tmp_path):
  """T = 300 > QUERY_CHUNK: several blocks, left padding, against transformers' logits."""
  assert 300 > llama.QUERY_CHUNK
  ref_model = make_hf_model("llama_gqa_llama3rope", tmp_path)
  model = models.from_pretrained(tmp_path, dtype=jnp.float32)
  rng = np.random.RandomState(4)
  ids = rng.randint(3, model.config.vocab_size, (2, 300))
  mask = np.ones_like(ids)
  mask[1, :70] = 0
  ids = np.where(mask == 1, ids, 0)
  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions)).logits.numpy()
  out = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert scaled_max_error(out, ref, mask.astype(bool)) < 1e-4


@pytest.mark.parametrize("window", [None, 7])
def test_last_only_prefill_equals_full_prefill(window):
  config = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                       model_type="mistral" if window else "llama")
  model = CausalLM(config, rngs=nnx.Rngs(2))
  rng = np.random.RandomState(0)
  b, t, s = 3, 21, 29
  ids = rng.randint(1, config.vocab_size, (b, t))
  mask = np.ones((b, t), np.int32)
  mask[1, :6] = 0
  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  kv_mask = np.concatenate([mask, np.ones((b, s - t), np.int32)], axis=1)
  args = (jnp.asarray(ids), jnp.asarray(positions))
  full, cache_full = model.forward_cached(*args, model.init_cache(b, s), 0, jnp.asarray(kv_mask),
                                          mode="prefill")
  last, cache_last = model.forward_cached(*args, model.init_cache(b, s), 0, jnp.asarray(kv_mask),
                                          mode="prefill", last_only=True)
  assert last.shape == (b, 1, config.hidden_size)
  assert scaled_max_error(last[:, 0], full[:, -1]) < 1e-5
  # every layer (the stacked [L, ...] cache) still caches all T tokens; the last layer runs outside
  # the layer scan with last_only, another program, so its keys/values agree to fp32 rounding
  assert scaled_max_error(np.asarray(cache_full.keys), np.asarray(cache_last.keys)) < 1e-6
  assert scaled_max_error(np.asarray(cache_full.values), np.asarray(cache_last.values)) < 1e-6


def test_last_only_needs_a_prefill():
  config = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2)
  model = CausalLM(config, rngs=nnx.Rngs(2))
  ids = jnp.ones((1, 1), jnp.int32)
  with pytest.raises(ValueError, match="last_only"):
    model.forward_cached(ids, ids, model.init_cache(1, 8), jnp.int32(3), jnp.ones((1, 8)),
                         last_only=True)


def test_prefill_is_an_explicit_mode():
  """mode="prefill" (causal self-attention over the new tokens) and mode="decode" (attention over
  the cache) give the same hidden states and cache for a prompt written at slot 0; a prefill at
  another slot or an unknown mode is an error."""
  config = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
  model = CausalLM(config, rngs=nnx.Rngs(2))
  b, t, s = 2, 7, 12
  ids = jnp.asarray(np.random.RandomState(1).randint(1, config.vocab_size, (b, t)))
  mask = np.ones((b, t), np.int32)
  mask[0, :2] = 0
  positions = jnp.asarray(np.maximum(mask.cumsum(-1) - 1, 0))
  kv_mask = jnp.asarray(np.concatenate([mask, np.ones((b, s - t), np.int32)], axis=1))
  pre, c_pre = model.forward_cached(ids, positions, model.init_cache(b, s), 0, kv_mask, mode="prefill")
  dec, c_dec = model.forward_cached(ids, positions, model.init_cache(b, s), 0, kv_mask, mode="decode")
  real = mask.astype(bool)
  assert scaled_max_error(np.asarray(pre)[real], np.asarray(dec)[real]) < 1e-5
  slot = np.asarray(kv_mask, bool)  # [B, S]: the pad slots' keys/values differ, and are never attended to
  for layer in range(config.num_hidden_layers):  # the cache is stacked [L, ...] over layers
    k0, k1 = (np.asarray(c.keys[layer]).transpose(0, 3, 1, 2) for c in (c_pre, c_dec))
    v0, v1 = (np.asarray(c.values[layer]).transpose(0, 2, 1, 3) for c in (c_pre, c_dec))
    assert scaled_max_error(k0[slot], k1[slot]) < 1e-5
    assert scaled_max_error(v0[slot], v1[slot]) < 1e-5
  with pytest.raises(ValueError, match="cache_index must be 0"):
    model.forward_cached(ids, positions, model.init_cache(b, s), 3, kv_mask, mode="prefill")
  with pytest.raises(ValueError, match="mode must be one of"):
    model.forward_cached(ids, positions, model.init_cache(b, s), 0, kv_mask, mode="chunked")
