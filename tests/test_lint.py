"""The code passes the linter configured in pyproject.toml ([tool.ruff]: pyflakes, pycodestyle,
bugbear, pyupgrade and ruff's own rules, 2-space indentation)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_check_passes():
  p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", "."], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout + p.stderr
