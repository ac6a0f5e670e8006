"""Gradient accumulation is one large batch: a step over A micro-batches of B rows moves the
parameters as one step over the A*B rows does, for the SFT loss (a mean over target tokens whose
count differs between micro-batches) and the DPO loss (a mean over pairs, with the weight-0 rows
that pad an epoch's last batch)."""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from engage_jax import sharding as shd
from engage_jax.checkpoint import flatten_params
from engage_jax.train import dpo_loss, loop, pair_data
from tests.numerics import rel_norm_diff
from tests.train import _helpers as H

# One SGD step (lr 1) of A=1 vs A=2 or 4 micro-batches: the same sums in another order, so the
# parameter change agrees to fp32 rounding relative to its norm on any CPU (tests/numerics.py); a
# micro-batch weighted wrongly (a plain mean of micro-batch means) is off by 10-50% here.
REL = 1e-4


def _step(loss_fn, params, batch, accum):
  """(params after one SGD step with lr 1 [flat dict], loss) over `batch` [N, ...] split in `accum`."""
  mesh = shd.make_mesh(data=1, devices=jax.devices()[:1])
  tx = optax.sgd(1.0)
  p, o, p_sh, o_sh = loop.init_sharded(tx, params, mesh)
  stacked = loop.stack_micro(batch, accum)
  step = loop.make_train_step(loss_fn, tx, optax.constant_schedule(1.0), mesh, p_sh, o_sh, stacked, donate=False)
  new, _, metrics = step(p, o, shd.place_batch(stacked, mesh, accum=True))
  return {k: np.asarray(v) - np.asarray(w) for (k, v), w in
          zip(flatten_params(new).items(), flatten_params(params).values())}, float(metrics["loss"])


def _check(loss_fn, params, batch, accum):
  d1, l1 = _step(loss_fn, params, batch, 1)
  assert max(float(np.abs(v).max()) for v in d1.values()) > 0
  d, loss = _step(loss_fn, params, batch, accum)
  worst = max(rel_norm_diff(d[k], d1[k]) for k in d1)
  assert worst < REL, (accum, worst)
  assert loss == pytest.approx(l1, rel=REL), (accum, loss, l1)


def test_sft_accumulation_equals_one_batch():
  """8 SFT rows whose target-token counts differ (row r has r + 1), in 2 micro-batches of 10 and
  26 targets: the step is the token mean over all 8 rows."""
  model = H.tiny_model(64, layers=1, d=32)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 64, (8, 16)).astype(np.int32)
  mask = np.zeros_like(ids)
  for r in range(8):
    mask[r, 16 - (r + 1):] = 1                            # row r: r + 1 target tokens at the end
  batch = {"input_ids": ids, "loss_mask": mask, "attention_mask": np.ones_like(ids),
           "row_weight": np.ones(8, np.float32)}
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  _check(loop.lm_loss_fn(graphdef, rest), params, batch, accum=2)


def test_dpo_accumulation_equals_one_batch_with_padding_rows(tmp_path):
  """8 pair rows, the last 3 of weight 0 (an epoch's padded last batch), in 4 micro-batches of
  2, 2, 1 and 0 real pairs: the step is still the mean over the 5 real pairs."""
  tok = H.tokenizer(str(tmp_path))
  pairs = H.sandbox_pairs(8)
  (_, arr), = pair_data.tokenize_pairs(pairs, tok, 96, 32, 32).items()
  batch = {k: arr[k][:8] for k in pair_data.PAIR_KEYS}
  rng = np.random.default_rng(1)
  batch.update(ref_chosen=rng.normal(-30, 3, 8).astype(np.float32),
               ref_rejected=rng.normal(-30, 3, 8).astype(np.float32),
               row_weight=np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32))
  model = H.tiny_model(tok.vocab_size, layers=1, d=32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  _check(dpo_loss.dpo_loss_fn(graphdef, rest, 0.1, "sigmoid", 0.0, 0.0), params, batch, accum=4)
