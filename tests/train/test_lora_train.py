"""LoRA training: only the adapters change and sit in the optimizer state, merged == base + adapter,
DPO with the adapter-off reference == DPO with an explicit frozen copy, exact SIGKILL resume, and a
resume onto another rank refused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from engage_jax.checkpoint import CheckpointMismatch, flatten_params
from engage_jax.models import lora
from engage_jax.train import dpo as dpo_train, pair_data, reference
from engage_jax.train import loop, sft as sft_train
from engage_jax.train.loop import read_metrics
from tests.numerics import scaled_max_error
from tests.train import _helpers as H

LCFG = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "up", "down"))
SFT_CFG = dict(steps=6, batch_size=4, learning_rate=1e-2, max_len=64, min_bucket=64, checkpoint_every=0,
               **H.FAST)


def _data():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 48, (24, 16)).astype(np.int32)
  ids[:, 1::2] = (ids[:, 0::2] * 3) % 48
  mask = np.ones_like(ids)
  mask[:, :2] = 0
  return {16: {"input_ids": ids, "loss_mask": mask, "attention_mask": np.ones_like(ids)}}


def _tiny(seed=0, **lk):
  """The tiny model (d 32) with LCFG adapters (fields overridden by lk)."""
  m = H.tiny_model(48, seed=seed, d=32)
  return lora.apply_lora(m, lora.LoraConfig(**{**LCFG.__dict__, **lk}), rngs=nnx.Rngs(seed + 100))


def test_sft_trains_only_the_adapters(tmp_path, monkeypatch):
  m = _tiny()
  base_before = {k: np.asarray(v) for k, v in flatten_params(nnx.state(m, nnx.Param)).items() if ".lora." not in k}
  ad_before = {k: np.asarray(v) for k, v in flatten_params(nnx.state(m, nnx.LoRAParam)).items()}
  captured = {}
  real_run = loop.run

  def spy(*a, **k):
    out = real_run(*a, **k)
    captured["state"] = out
    return out
  monkeypatch.setattr(loop, "run", spy)
  data = _data()
  m, summary = sft_train.train_sft(m, data, SFT_CFG, str(tmp_path / "run"))
  recs = read_metrics(str(tmp_path / "run"))
  assert recs[-1]["loss"] < recs[0]["loss"]
  # base weights bit-for-bit unchanged, every adapter B moved
  after = flatten_params(nnx.state(m, nnx.Param))
  for k, v in base_before.items():
    np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=k)
  # each adapter B is stacked over the 2 layers [L, r, out]: every layer's slice moved
  moved = [(k, i) for k, v in ad_before.items() if k.endswith("lora_b")
           for i in range(v.shape[0]) if np.abs(np.asarray(after[k])[i] - v[i]).max() > 0]
  assert len(moved) == 2 * 5
  # optimizer state: Adam mu + nu of the adapter leaves only (plus scalar counts)
  n_adapter = len(ad_before)
  opt = captured["state"].opt_state
  shaped = [x for x in jax.tree.leaves(opt) if np.ndim(x) > 0]
  assert len(shaped) == 2 * n_adapter == 2 * 2 * 5  # (mu, nu) x (A, B) x 5 targets, each stacked [L, ...]
  assert sorted(tuple(x.shape) for x in shaped) == sorted(2 * [tuple(v.shape) for v in ad_before.values()])
  assert len(jax.tree.leaves(captured["state"].params)) == n_adapter
  # merged weights give the logits of base + adapter
  ids = data[16]["input_ids"][:4]
  on = np.asarray(m(ids))
  merged = lora.merge(m)
  assert scaled_max_error(merged(ids), on) < 1e-5  # merged vs adapter: two programs, rounding only
  with lora.disabled(m):
    assert np.abs(np.asarray(m(ids)) - on).max() > 1e-3  # the trained adapter is not a no-op


def test_rank0_is_plain_full_finetuning(tmp_path):
  a, b = H.tiny_model(48, d=32), H.tiny_model(48, d=32)
  lora.apply_lora(b, lora.LoraConfig(rank=0))
  sft_train.train_sft(a, _data(), SFT_CFG, str(tmp_path / "a"))
  sft_train.train_sft(b, _data(), SFT_CFG, str(tmp_path / "b"))
  ra, rb = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
  assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
  pa, pb = flatten_params(nnx.state(a, nnx.Param)), flatten_params(nnx.state(b, nnx.Param))
  for k in pa:
    np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]))


DPO_CFG = dict(steps=4, batch_size=8, learning_rate=3e-3, max_len=96, max_completion_len=32, min_bucket=32,
               checkpoint_every=0, **H.FAST)


def test_dpo_adapter_off_reference_equals_explicit_frozen_copy(tmp_path):
  tok = H.tokenizer(str(tmp_path))
  path = H.write_pairs(str(tmp_path / "pairs.jsonl"), H.sandbox_pairs(16))
  # a non-identity adapter (random B), so an adapter-*on* reference would differ
  mk = lambda: lora.apply_lora(H.tiny_model(tok.vocab_size), lora.LoraConfig(rank=4, alpha=8.0, init="random"),
                               rngs=nnx.Rngs(7))
  pa, _ = dpo_train.train_dpo(mk(), None, [path], tok, DPO_CFG, str(tmp_path / "off"))
  pb, _ = dpo_train.train_dpo(mk(), H.tiny_model(tok.vocab_size), [path], tok, DPO_CFG, str(tmp_path / "copy"))
  a, b = np.load(tmp_path / "off" / "ref_logps_train.npz"), np.load(tmp_path / "copy" / "ref_logps_train.npz")
  # adapters off vs a plain copy: two programs for one function, so sequence log-probs (sums of
  # magnitude ~100, whose fp32 ulp is ~8e-6) agree to rounding relative to that scale on any CPU
  assert scaled_max_error(a["chosen"], b["chosen"]) < 1e-6
  assert scaled_max_error(a["rejected"], b["rejected"]) < 1e-6
  ra, rb = read_metrics(str(tmp_path / "off")), read_metrics(str(tmp_path / "copy"))
  assert len(ra) == len(rb) == 4
  for x, y in zip(ra, rb):
    for k in ("loss", "rewards/margins", "rewards/chosen"):  # beta x (differences of those sums)
      assert abs(x[k] - y[k]) < 1e-5, (x["step"], k, x[k], y[k])
  assert abs(ra[0]["rewards/margins"]) > 1e-4  # the adapter made policy != reference at step 1
  # a policy with adapters *on* as the explicit reference gives other reference log-probs
  on = reference.compute_ref_logps(mk(), pair_data.tokenize_pairs(pair_data.read_pair_files(path), tok, 96, 32, 32), 8)
  assert np.abs(on[0] - a["chosen"]).max() > 1e-3


_VICTIM = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.train import test_lora_train as T
from engage_jax.train import sft
def on_step(step, m):
  if step == 5:
    os.kill(os.getpid(), signal.SIGKILL)
sft.train_sft(T._tiny(), T._data(), T.RESUME_CFG, {wd!r}, on_step=on_step)
"""
RESUME_CFG = dict(SFT_CFG, steps=8, grad_accum=2, batch_size=2, checkpoint_every=3, eval_at_start=False)


def test_sigkill_resume_of_an_adapter_run_is_exact(tmp_path):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  p = subprocess.run([sys.executable, "-c", _VICTIM.format(repo=repo, wd=killed)], capture_output=True, text=True,
                     timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
  assert os.path.isdir(os.path.join(killed, "checkpoints", "3"))
  assert not os.path.isdir(os.path.join(killed, "checkpoints", "6"))
  ma, _ = sft_train.train_sft(_tiny(), _data(), RESUME_CFG, full)
  mb, sb = sft_train.train_sft(_tiny(), _data(), RESUME_CFG, killed)
  assert sb["start_step"] == 3
  a, b = read_metrics(full), read_metrics(killed)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
  for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "learning_rate"):  # same program, same machine, restored state
      assert abs(x[k] - y[k]) < 1e-6, (x["step"], k)
  fa, fb = flatten_params(nnx.state(ma, nnx.Param)), flatten_params(nnx.state(mb, nnx.Param))
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
  # the checkpoint holds the adapter only, so resuming onto another rank is refused naming it
  with pytest.raises(CheckpointMismatch, match=r"lora\.lora_a' has shape \[\d+, \d+, 4\] in the checkpoint but \[\d+, \d+, 8\]"):
    sft_train.train_sft(_tiny(rank=8), _data(), dict(RESUME_CFG, steps=9), killed)


def test_restore_model_loads_the_trained_adapters(tmp_path):
  """checkpoint.restore_model(variables=nnx.LoRAParam) (launch/export.py's LoRA path): a fresh model
  with adapters of the same rank gets exactly the trained adapters of the run's last checkpoint;
  its base is untouched."""
  from engage_jax import checkpoint
  m, _ = sft_train.train_sft(_tiny(), _data(), SFT_CFG, str(tmp_path / "run"))
  trained = {k: np.asarray(v) for k, v in flatten_params(nnx.state(m, nnx.LoRAParam)).items()}
  fresh = _tiny(seed=1)
  base = {k: np.asarray(v) for k, v in flatten_params(nnx.state(fresh, nnx.Param)).items() if ".lora." not in k}
  ckpt = tmp_path / "run" / "checkpoints"
  step = checkpoint.restore_model(fresh, str(ckpt), variables=nnx.LoRAParam)
  assert step == SFT_CFG["steps"]
  got = {k: np.asarray(v) for k, v in flatten_params(nnx.state(fresh, nnx.LoRAParam)).items()}
  assert got.keys() == trained.keys() and all(np.array_equal(got[k], trained[k]) for k in got)
  after = {k: np.asarray(v) for k, v in flatten_params(nnx.state(fresh, nnx.Param)).items()}
  assert all(np.array_equal(after[k], base[k]) for k in base)
  with pytest.raises(FileNotFoundError):
    checkpoint.restore_model(_tiny(), str(tmp_path / "nothing"), variables=nnx.LoRAParam)
