"""SFT on sandbox dialogues lowers held-out loss; NaN stops the run naming the step."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from engage_jax import sharding as shd
from engage_jax.checkpoint import CheckpointManager
from engage_jax.train import loop
from engage_jax.train.sft import train_sft
from tests.train import _helpers as H

# Tolerances: the schedule is optax in fp32; values are exact binary fractions or a cosine, so the
# default relative 1e-6 (or 1e-6 absolute for 0.55) is ~10 fp32 ulps on any CPU.


def test_sft_lowers_held_out_loss(tmp_path):
  tok = H.tokenizer(str(tmp_path))
  tr, ev = H.sft_arrays(tok, max_len=96)
  model = H.tiny_model(tok.vocab_size)
  cfg = dict(steps=24, batch_size=8, learning_rate=3e-3, log_every=8, checkpoint_every=12, progress=False,
             warmup_steps=2, max_len=96)
  model, summary = train_sft(model, tr, cfg, str(tmp_path / "run"), eval_data=ev)
  start, end = summary["eval_start"]["loss"], summary["eval_end"]["loss"]
  assert end < start - 1.0, (start, end)
  recs = loop.read_metrics(str(tmp_path / "run"))
  assert [r["step"] for r in recs] == [8, 16, 24]
  assert {"loss", "grad_norm", "learning_rate", "tokens_per_s"} <= set(recs[-1])
  assert recs[-1]["loss"] < recs[0]["loss"]
  assert CheckpointManager(str(tmp_path / "run" / "checkpoints")).all_steps() == [12, 24]


def test_schedule_warmup_then_cosine():
  cfg = loop.TrainConfig(learning_rate=1.0, warmup_steps=4, min_lr_ratio=0.1)
  sched = loop.make_schedule(cfg, 20)
  assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(0.5)
  assert float(sched(4)) == pytest.approx(1.0) and float(sched(20)) == pytest.approx(0.1)
  assert float(sched(12)) == pytest.approx(0.55, abs=1e-6)


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  """A loss that turns NaN on the 5th batch: the run stops naming step 5; checkpoints 2 and 4 are
  finite and nothing later is written."""
  params, loss_fn = H.poisoned_lm_loss()

  def make_batches(state):
    class It:
      def __init__(self, i):
        self.i = i
      def state(self):
        return {"i": self.i}
      def __iter__(self):
        rng = np.random.default_rng(0)
        while True:
          ids = rng.integers(1, 64, (4, 16)).astype(np.int32)
          self.i += 1
          yield {"input_ids": ids, "loss_mask": np.ones_like(ids), "attention_mask": np.ones_like(ids),
                 "poison": np.full((4,), self.i == 5, np.int32)}
    return It((state or {}).get("i", 0))

  cfg = loop.TrainConfig(steps=8, batch_size=4, checkpoint_every=2, progress=False, log_every=1)
  with pytest.raises(loop.NonFiniteLossError, match="step 5") as e:
    loop.run(loss_fn, params, make_batches, cfg, str(tmp_path), total_steps=8)
  assert e.value.step == 5 and "last good checkpoint: step 4" in str(e.value)
  mgr = CheckpointManager(str(tmp_path / "checkpoints"))
  assert mgr.all_steps() == [2, 4]
  restored = mgr.restore(nnx.state(H.tiny_model(64, d=32, layers=1), nnx.Param))
  assert all(np.isfinite(np.asarray(v[...])).all() for _, v in nnx.to_flat_state(restored.params))


def test_a_non_finite_step_changes_nothing():
  """The train step on a batch whose loss is NaN returns the parameters and optimizer state it was
  given, bit for bit, and says finite = 0; a finite batch moves the parameters."""
  params, loss_fn = H.poisoned_lm_loss()

  cfg = loop.TrainConfig(steps=2, batch_size=4, learning_rate=1e-2, warmup_steps=0)
  tx, schedule = loop.make_optimizer(cfg, 2)
  mesh = shd.make_mesh(data=1, devices=jax.devices()[:1])
  params, opt, p_sh, o_sh = loop.init_sharded(tx, params, mesh)
  ids = np.random.default_rng(0).integers(1, 64, (1, 4, 16)).astype(np.int32)
  batch = {"input_ids": ids, "loss_mask": np.ones_like(ids), "attention_mask": np.ones_like(ids)}
  step = loop.make_train_step(loss_fn, tx, schedule, mesh, p_sh, o_sh, dict(batch, poison=ids[:, :, 0]), donate=False)
  for poison, moved in ((1, False), (0, True)):
    new_p, new_o, m = step(params, opt, dict(batch, poison=np.full((1, 4), poison, np.int32)))
    assert float(m["finite"]) == float(not poison)
    same = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
            zip(jax.tree.leaves((new_p, new_o)), jax.tree.leaves((params, opt)))]
    assert (not any(same[:len(jax.tree.leaves(new_p))])) if moved else all(same), same
