"""launch/rate.py without a server: --invite prints links and stores only hashes; bad flags and a
missing workdir / database are one-line errors with exit code 2."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from engage_jax.errors import InputError
from engage_jax.human_eval.store import digest

from .conftest import OVERRIDES, REPO


def _rate(*args, timeout=120):
  return subprocess.run([sys.executable, "launch/rate.py", "--config=configs/sandbox_es.py", *OVERRIDES, *args],
                        cwd=REPO, text=True, capture_output=True, timeout=timeout)


def test_invite_then_report_and_errors(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  r = _rate(f"--workdir={wd}", "--report")
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no study database" in r.stderr
  for m in ("sft", "dpo"):  # --invite needs both agents (their HF exports; not loaded here)
    (wd / f"{m}_agent" / "hf").mkdir(parents=True)
    (wd / f"{m}_agent" / "hf" / "config.json").write_text("{}")
  r = _rate(f"--workdir={wd}", "--invite=3", "--port=9999")
  assert r.returncode == 0, r.stderr
  links = r.stdout.split()
  assert len(links) == 3 and all(x.startswith("http://127.0.0.1:9999/r/") for x in links)
  db = sqlite3.connect(wd / "human_eval" / "rate.sqlite")
  assert sorted(h for (h,) in db.execute("SELECT token_hash FROM raters")) == sorted(
      digest(x.rsplit("/", 1)[1]) for x in links)
  r = _rate(f"--workdir={wd}", "--report")                     # no report.json yet: summary + report.md
  assert r.returncode == 0, r.stderr
  assert (wd / "human_eval" / "summary.json").is_file() and "No rated sessions" in (wd / "report.md").read_text()
  r = _rate(f"--workdir={tmp_path / 'missing'}", "--invite=1")
  assert r.returncode == 2 and "no such workdir" in r.stderr and r.stderr.strip().count("\n") == 0


def test_study_checks_in_process(tmp_path):
  """The same checks the launcher turns into one-line errors, without a subprocess each."""
  from engage_jax.human_eval import study
  from engage_jax.human_eval.store import StoreError
  cfg = config()
  with pytest.raises(InputError, match="must be positive"):
    study.settings(cfg, scenarios=0)
  with pytest.raises(InputError, match="max_agent_turns"):
    study.settings(cfg, max_agent_turns=-1)
  assert study.settings(cfg).max_agent_turns == cfg.eval.max_agent_turns
  wd = tmp_path / "wd"
  wd.mkdir()
  with pytest.raises(InputError, match="no tokenizer"):
    study.build_app(cfg, wd, warm_up=False)
  study.open_store(cfg, wd)
  cfg.task = "p4g"
  with pytest.raises(StoreError, match="task 'es', not 'p4g'"):
    study.open_store(cfg, wd)


def config():
  sys.path.insert(0, str(REPO / "configs"))
  import sandbox_es
  return sandbox_es.get_config()
