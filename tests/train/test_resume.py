"""KILL-AND-RESUME: a run SIGKILLed after a checkpoint exists, resumed, equals an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from engage_jax.train.loop import read_metrics

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_run.py")


def _start(workdir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, SCRIPT, str(workdir), *extra], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


def test_kill_and_resume_matches_uninterrupted(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  ref = _start(full)
  victim = _start(killed, "--pause-at", "5")
  lines = []
  for line in victim.stdout:
    lines.append(line)
    if line.startswith("PAUSED"):
      break
  assert lines and lines[-1].startswith("PAUSED 5"), "".join(lines)
  assert os.path.isdir(killed / "checkpoints" / "3")  # a checkpoint exists, steps 4-5 are lost
  os.kill(victim.pid, signal.SIGKILL)
  victim.wait(timeout=30)
  assert victim.returncode == -signal.SIGKILL
  assert max(r["step"] for r in read_metrics(str(killed))) == 5

  out, _ = ref.communicate(timeout=300)
  assert ref.returncode == 0, out
  resumed = subprocess.run([sys.executable, SCRIPT, str(killed)], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout

  a, b = read_metrics(str(full)), read_metrics(str(killed))
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 11))
  # resumed vs uninterrupted: the same program on the same machine from a restored state, so the
  # absolute 1e-6 bounds (losses ~4, weights ~0.1) hold on any CPU; only processes differ
  for ra, rb in zip(a, b):
    for k in ("loss", "grad_norm", "learning_rate"):
      assert abs(ra[k] - rb[k]) < 1e-6, (ra["step"], k, ra[k], rb[k])
  pa, pb = np.load(full / "final_params.npz"), np.load(killed / "final_params.npz")
  assert sorted(pa.files) == sorted(pb.files)
  for k in pa.files:
    assert float(np.abs(pa[k] - pb[k]).max()) < 1e-6, k
