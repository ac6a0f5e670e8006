"""The sharded train step on 8 forced host CPU devices equals the unsharded one (subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys


def test_sharded_train_step_matches_unsharded():
  script = os.path.join(os.path.dirname(__file__), "sharded_step_check.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, env=env)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
