"""The sharded train step on 8 forced host CPU devices equals the unsharded one (subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.numerics import subprocess_env


def test_sharded_train_step_matches_unsharded():
  script = os.path.join(os.path.dirname(__file__), "sharded_step_check.py")
  env = subprocess_env(None, JAX_PLATFORMS="cpu")  # the script forces its own 8 devices
  r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, env=env)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
