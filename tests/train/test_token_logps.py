"""Pins the one token log-prob function (`logprobs.token_logps`) bit for bit against the formulas that
the SFT loss and DPO's `sequence_logps` each wrote out before they shared it (issue 15)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engage_jax.logprobs import token_logps
from engage_jax.train import dpo_loss as dpo_obj, pair_data
from tests.train import _helpers as H

# Tolerances: fp32 log-softmax of exact inputs, compared relative (rtol 1e-6, ~10 ulps) to numpy's
# float64 logs: independent of the CPU's vector width. Bit-identity checks compare one program.


def _old_sft_token_logps(logits, input_ids):
  logits = logits[:, :-1].astype(jnp.float32)
  tgt = input_ids[:, 1:]
  picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def _old_dpo_sequence_logps(model, batch):
  pid, pm = batch["prompt_ids"], batch["prompt_mask"]
  b, p = pid.shape
  ids = jnp.concatenate([jnp.concatenate([pid, batch["chosen_ids"]], 1),
                         jnp.concatenate([pid, batch["rejected_ids"]], 1)], 0)
  cmask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
  att = jnp.concatenate([jnp.concatenate([pm, pm], 0), cmask], 1)
  hidden = model.hidden_states(ids, att)
  logits = model.logits(hidden[:, p - 1:-1])
  tgt = ids[:, p:]
  picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
  lp = (picked - jax.nn.logsumexp(logits, axis=-1)) * cmask
  seq = jnp.sum(lp, axis=-1)
  cnt = jnp.sum(cmask, axis=-1).astype(jnp.float32)
  return seq[:b], seq[b:], cnt[:b], cnt[b:]


def test_token_logps_shape_and_value():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]], jnp.float32))   # [1, 2, 3]
  got = np.asarray(token_logps(logits, jnp.array([[0, 1]])))
  assert got.shape == (1, 2)
  np.testing.assert_allclose(got, np.log([[0.5, 0.8]]), rtol=1e-6)


def test_sft_loss_logps_bit_identical():
  for s, dtype in enumerate([jnp.float32, jnp.bfloat16, jnp.float32]):
    logits = (jax.random.normal(jax.random.PRNGKey(s), (3, 17, 211)) * (1 + 3 * s)).astype(dtype)
    ids = jax.random.randint(jax.random.PRNGKey(10 + s), (3, 17), 0, 211)
    new = jax.jit(lambda x, t: token_logps(x[:, :-1], t[:, 1:]))(logits, ids)
    old = jax.jit(_old_sft_token_logps)(logits, ids)
    assert new.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_dpo_sequence_logps_bit_identical(tmp_path):
  tok = H.tokenizer(str(tmp_path))
  path = H.write_pairs(str(tmp_path / "pairs.jsonl"), H.sandbox_pairs(8))
  buckets = pair_data.tokenize_pairs(pair_data.read_pair_files(path), tok, 96, 32, 32)
  model = H.tiny_model(tok.vocab_size)
  for arr in buckets.values():
    batch = {k: jnp.asarray(arr[k][:4]) for k in pair_data.PAIR_KEYS}
    new = nnx.jit(dpo_obj.sequence_logps)(model, batch)
    old = nnx.jit(_old_dpo_sequence_logps)(model, batch)
    for a, b in zip(new, old):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
