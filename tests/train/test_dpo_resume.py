"""SIGKILL in the middle of a DPO epoch, then resume: the same metrics and weights as a run that was
never interrupted (the checkpoint is mid-epoch, so the batch position must come back with it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
from flax import nnx

from engage_jax.checkpoint import flatten_params
from engage_jax.train import dpo as dpo_train
from engage_jax.train.loop import read_metrics
from tests.conftest import REPO
from tests.train import _helpers as H

# 12 pairs, 4 a step: 3 steps an epoch, 3 epochs. Checkpoints at steps 2, 4, 6, 8; the kill comes
# after step 5 (epoch 2's second step), so the resume starts from step 4 (epoch 2's first step).
CFG = dict(num_epochs=3, batch_size=4, learning_rate=3e-3, max_len=96, max_completion_len=32, min_bucket=32,
           checkpoint_every=2, **dict(H.FAST, eval_at_start=False))
KILL_AT = 5

_VICTIM = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.train import test_dpo_resume as T
def on_step(step, metrics):
  if step == T.KILL_AT:
    os.kill(os.getpid(), signal.SIGKILL)
T.run({root!r}, {wd!r}, on_step)
"""


def run(root: str, workdir: str, on_step=None):
  """DPO of a tiny policy against a tiny reference on 12 sandbox pairs (tokenizer cached in root)."""
  tok = H.tokenizer(root)
  path = os.path.join(root, "pairs.jsonl")
  if not os.path.exists(path):
    H.write_pairs(path, H.sandbox_pairs(12, seed=4))
  policy = H.tiny_model(tok.vocab_size, seed=0, layers=1, d=32)
  ref = H.tiny_model(tok.vocab_size, seed=0, layers=1, d=32)
  return dpo_train.train_dpo(policy, ref, [path], tok, CFG, workdir, on_step=on_step)


def test_sigkill_mid_dpo_epoch_then_resume_is_exact(tmp_path):
  root, killed, full = str(tmp_path), str(tmp_path / "killed"), str(tmp_path / "full")
  full_model, _ = run(root, full)                        # also caches the tokenizer and the pairs
  p = subprocess.run([sys.executable, "-c", _VICTIM.format(repo=str(REPO), root=root, wd=killed)],
                     capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == -signal.SIGKILL, p.stdout[-2000:] + p.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == ["2", "4"]
  assert max(r["step"] for r in read_metrics(killed)) == KILL_AT
  model, summary = run(root, killed)
  assert summary["start_step"] == 4 and summary["step"] == summary["total_steps"] == 9
  a, b = read_metrics(full), read_metrics(killed)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 10))
  # same program on the same machine, restored state: equal to the bit
  for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "learning_rate", "rewards/margins", "rewards/accuracies"):
      assert x[k] == y[k], (x["step"], k, x[k], y[k])
  fa = flatten_params(nnx.state(full_model, nnx.Param))
  fb = flatten_params(nnx.state(model, nnx.Param))
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
