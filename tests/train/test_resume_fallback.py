"""Resumes that survive bad luck: a corrupt latest checkpoint falls back to the newest intact one,
the metrics' running averages continue across a resume, and a NaN stop resumes with a lower LR."""
from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engage_jax.checkpoint import CheckpointManager, flatten_params
from engage_jax.train import loop
from tests.train import _helpers as H

# 8 steps; checkpoints at 2, 4, 6 (keep 3); metrics every 3 steps, so a resume from step 4 lands
# inside the logging interval 4..6.
CFG = dict(steps=8, batch_size=4, checkpoint_every=2, keep_checkpoints=3, log_every=3, progress=False,
           eval_at_start=False, learning_rate=1e-2, warmup_steps=2)


class Batches:
  """Seeded synthetic SFT batches whose position is checkpointed; `poison` makes batch N's loss NaN."""

  def __init__(self, state, poison=0):
    self.i, self.poison = (state or {}).get("i", 0), poison

  def state(self):
    return {"i": self.i}

  def __iter__(self):
    while True:
      rng = np.random.default_rng(self.i)
      ids = rng.integers(1, 64, (4, 16)).astype(np.int32)
      self.i += 1
      yield {"input_ids": ids, "loss_mask": np.ones_like(ids), "attention_mask": np.ones_like(ids),
             "poison": np.full((4,), self.i == self.poison, np.int32)}


class Stop(Exception):
  pass


def _train(workdir, stop_at=None, poison=0, **over):
  params, loss_fn = H.poisoned_lm_loss()

  def on_step(step, _):
    if step == stop_at:
      raise Stop(step)

  cfg = loop.TrainConfig(**dict(CFG, **over))
  state = loop.run(loss_fn, params, lambda s: Batches(s, poison), cfg, str(workdir), total_steps=8,
                   on_step=on_step)
  return {k: np.asarray(v) for k, v in flatten_params(state.params).items()}, state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run, and one stopped (crashed) right after its step-6 checkpoint."""
  root = tmp_path_factory.mktemp("resume")
  ref, _ = _train(root / "ref")
  with pytest.raises(Stop):
    _train(root / "stopped", stop_at=6)
  return root, ref


def _metrics(d):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in loop.read_metrics(str(d))]


def test_truncated_latest_checkpoint_falls_back_to_previous(runs, tmp_path, capfd):
  root, ref = runs
  corrupt, clean = tmp_path / "corrupt", tmp_path / "clean"
  shutil.copytree(root / "stopped", corrupt)
  shutil.copytree(root / "stopped", clean)
  files = sorted(p for p in (corrupt / "checkpoints" / "6" / "params").rglob("*") if p.is_file())
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])  # truncated
  shutil.rmtree(clean / "checkpoints" / "6")  # the same state, resumed from step 4 without damage

  a, sa = _train(corrupt)
  err = capfd.readouterr().err
  assert "checkpoints/6 is corrupt" in err and "falling back" in err and "resuming from step 4" in err
  assert sa.summary["start_step"] == 4 and sa.step == 8
  assert list((corrupt / "checkpoints.corrupt").iterdir())  # moved aside, so step 6 was rewritten
  b, sb = _train(clean)
  assert sb.summary["start_step"] == 4
  assert sorted(a) == sorted(b) == sorted(ref)
  for k in a:  # resumed vs uninterrupted: the same program on the same machine from restored state
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    np.testing.assert_allclose(a[k], ref[k], atol=1e-6, err_msg=k)
  assert _metrics(corrupt) == _metrics(clean)


def test_metrics_continue_their_interval_across_a_resume(runs, tmp_path):
  """Resumed from step 4 (inside the 4..6 logging interval), the step-6 mean still covers 4, 5, 6."""
  root, _ = runs
  d = tmp_path / "resumed"
  shutil.copytree(root / "stopped", d)
  shutil.rmtree(d / "checkpoints" / "6")
  _train(d)
  got, want = _metrics(d), _metrics(root / "ref")
  assert [s for s, *_ in got] == [s for s, *_ in want] == [3, 6, 8]
  for (s, la, ga), (_, lb, gb) in zip(got, want):
    assert abs(la - lb) < 1e-6 and abs(ga - gb) < 1e-6, s  # same program, same machine


def test_every_checkpoint_corrupt_is_one_clear_error(runs, tmp_path):
  root, _ = runs
  d = tmp_path / "all_bad"
  shutil.copytree(root / "stopped", d)
  for step in (2, 4, 6):
    for p in (d / "checkpoints" / str(step) / "meta").rglob("*"):
      if p.is_file():
        p.write_text("{not json")
  with pytest.raises(ValueError, match=r"no intact checkpoint: steps \[6, 4, 2\]"):
    _train(d)


def test_nan_stop_then_lower_lr_resumes_from_last_good_step(tmp_path):
  d = tmp_path / "nan"
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint: step 4"):
    _train(d, poison=5)
  _, state = _train(d, learning_rate=1e-3)  # the user lowers the LR and reruns
  assert state.summary["start_step"] == 4 and state.step == 8
  recs = {r["step"]: r for r in loop.read_metrics(str(d))}
  assert set(recs) == {3, 6, 8} and all(np.isfinite(r["loss"]) for r in recs.values())
  lowered = loop.make_schedule(loop.TrainConfig(**dict(CFG, learning_rate=1e-3)), 8)
  assert recs[8]["learning_rate"] == pytest.approx(float(lowered(7)), rel=1e-5)  # fp32 schedule, relative
  mgr = CheckpointManager(str(d / "checkpoints"), read_only=True)
  assert mgr.latest_step() == 8


def test_nan_parameters_in_a_checkpoint_count_as_corrupt(tmp_path):
  from engage_jax import checkpoint
  model = H.tiny_model(64, d=32, layers=1)
  params = nnx.state(model, nnx.Param)
  mgr = CheckpointManager(str(tmp_path / "ck"))
  mgr.save(1, params, None)
  bad = jax.tree.map(lambda x: x * jnp.nan, params)
  mgr.save(2, bad, None)
  warnings = []
  r = mgr.restore_intact(nnx.state(H.tiny_model(64, d=32, layers=1, seed=1), nnx.Param), warn=warnings.append)
  assert r.step == 1 and "ck/2 is corrupt" in warnings[0] and "non-finite values in parameter" in warnings[0]
  assert mgr.all_steps() == [1] and len(list((tmp_path / "ck.corrupt").iterdir())) == 1
  mgr.save(2, bad, None)
  with pytest.raises(checkpoint.CorruptCheckpoint, match="non-finite"):
    checkpoint.restore_model(H.tiny_model(64, d=32, layers=1), str(tmp_path / "ck"), step=2)
