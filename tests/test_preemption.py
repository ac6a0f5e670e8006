"""SIGTERM / SIGINT during a stage (engage_jax/preemption.py) and the workdir lock.

The launcher stops at the stage's next safe point, writes what it has, releases DIR/.lock and exits
128 + signum with one line naming the stage and saying how to resume; the rerun ends with the same
pairs and report as an uninterrupted run. A second run on a locked workdir is refused in one line;
a lock left by a killed run is taken over with a line that says so.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engage_jax import preemption
from engage_jax.errors import InputError
from engage_jax.workdir import LOCK, Workdir
from tests.numerics import subprocess_env

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HANG_GUARD_S = 900  # only keeps a hang from blocking the suite; nothing here asserts a duration

# tests/test_stage_resume.py's tiny models, with an SFT long enough to be stopped in the middle and
# a search of 6 one-tree shards (a stop between shards leaves some shards written). The run is
# paused (SIGSTOP) as soon as the test sees the point it wants, so the signal lands there however
# fast or loaded the machine is.
TINY = ["--config.data.sandbox_train=40", "--config.data.sandbox_valid=8", "--config.data.max_len=128",
        "--config.tokenizer.vocab_size=300", "--config.sft.agent_steps=200", "--config.sft.simulator_steps=4",
        "--config.sft.batch_size=4", "--config.sft.log_every=1", "--config.sft.eval_every=0",
        "--config.sft.checkpoint_every=1000", "--config.sft.warmup_steps=1",
        "--config.search.n_conditions=6", "--config.search.trees_per_shard=1", "--config.search.k=2",
        "--config.search.budget=2", "--config.search.max_depth=1", "--config.search.max_turns=1",
        "--config.search.agent_sampling.max_new_tokens=4", "--config.search.simulator_sampling.max_new_tokens=4",
        "--config.search.max_prompt_len=128", "--config.dpo.steps=2",
        "--config.eval.n_conditions=4", "--config.eval.samples_per_condition=1", "--config.eval.max_agent_turns=1"]
for _role in ("agent", "simulator"):
  TINY += [f"--config.model.{_role}.hidden_size=32", f"--config.model.{_role}.intermediate_size=64",
           f"--config.model.{_role}.num_hidden_layers=1", f"--config.model.{_role}.max_position_embeddings=256"]


def _cmd(wd: Path) -> list[str]:
  return [PY, "launch/pipeline.py", "--config=configs/sandbox_es.py", f"--workdir={wd}", *TINY]


def _env() -> dict:
  return subprocess_env(1, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _start(wd: Path, log: Path) -> subprocess.Popen:
  return subprocess.Popen(_cmd(wd), cwd=REPO, env=_env(), stdout=open(log, "w"), stderr=subprocess.PIPE,
                          text=True)


def _pause_when(cond, proc: subprocess.Popen, what: str) -> None:
  """Polls `cond`; when it holds, pauses `proc` (SIGSTOP)."""
  t0 = time.monotonic()
  while not cond():
    if proc.poll() is not None or time.monotonic() - t0 > HANG_GUARD_S:
      proc.kill()
      raise AssertionError(f"{what} never happened (rc={proc.poll()}): {proc.stderr.read()[-2000:]}")
    time.sleep(0.01)
  proc.send_signal(signal.SIGSTOP)


def _signal_paused(proc: subprocess.Popen, signum: int) -> None:
  proc.send_signal(signum)
  proc.send_signal(signal.SIGCONT)


def _lines(path: Path) -> int:
  return len(path.read_text().splitlines()) if path.exists() else 0


def _report(wd: Path) -> dict:
  rep = json.loads((wd / "report.json").read_text())
  rep.pop("wall_seconds")
  return rep


def _pairs(wd: Path) -> dict[str, bytes]:
  return {f.name: f.read_bytes() for f in sorted((wd / "pairs").glob("*.jsonl"))}


def _diff(a, b, path: str = "") -> list[str]:
  """The paths at which two JSON values differ (for a readable failure)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
  return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _trees(wd: Path) -> dict[str, bytes]:
  return {f.name: f.read_bytes() for f in sorted((wd / "search" / "trees").glob("*.json"))}


def _stopped(proc: subprocess.Popen, signum: int, stage: str) -> str:
  err = proc.communicate(timeout=HANG_GUARD_S)[1]
  assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
  # stderr carries progress bars and INFO logs, then the one line: no traceback, no Orbax noise
  lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
  assert "Traceback" not in err and [ln for ln in lines if "stopped:" in ln] == lines[-1:], err[-3000:]
  name = signal.Signals(signum).name
  assert lines[-1].startswith(f"stopped: stage {stage} stopped by {name}") and "resume" in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
  wd = tmp_path_factory.mktemp("preempt") / "ref"
  p = subprocess.run(_cmd(wd), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert p.returncode == 0, p.stderr[-3000:]
  return wd


def test_sigterm_in_sft_then_sigint_in_search_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
  wd = tmp_path / "wd"
  # 1. SIGTERM while sft_agent trains: it checkpoints the step it reached and stops
  proc = _start(wd, tmp_path / "a.log")
  metrics = wd / "sft_agent" / "metrics.jsonl"
  _pause_when(lambda: _lines(metrics) >= 3, proc, "3 logged sft_agent steps")
  # meanwhile a second run on the same workdir is refused in one line, before any work
  second = subprocess.run(_cmd(wd), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr[-2000:]
  assert "in use by another run" in second.stderr and f"pid {proc.pid}" in second.stderr
  assert str(wd / LOCK) in second.stderr
  _signal_paused(proc, signal.SIGTERM)
  line = _stopped(proc, signal.SIGTERM, "sft_agent")
  step = int(line.split("(step ")[1].split(";")[0])
  assert 1 <= step < 200, line
  assert (wd / "sft_agent" / "checkpoints" / str(step)).is_dir()  # what it had is written
  leftovers = [p.name for p in (wd / "sft_agent" / "checkpoints").iterdir() if not p.name.isdigit()]
  assert leftovers == [], leftovers  # no Orbax temp dir
  assert not (wd / LOCK).exists()
  st = json.loads((wd / "stages.json").read_text())["sft_agent"]
  assert st["done"] is False and "running_since" not in st  # an ended attempt, not a killed one

  # 2. resumed, then SIGINT after the first search shard is written
  proc = _start(wd, tmp_path / "b.log")
  _pause_when(lambda: (wd / "pairs" / "shard-00000.jsonl").exists(), proc, "the first search shard")
  _signal_paused(proc, signal.SIGINT)
  _stopped(proc, signal.SIGINT, "search")
  assert not (wd / LOCK).exists()
  written = sorted(p.name for p in (wd / "pairs").glob("shard-*.jsonl"))
  assert 1 <= len(written) < 6, written
  assert json.loads((wd / "stages.json").read_text())["sft_agent"]["attempts"] == 2

  # 3. the rerun finishes and equals the uninterrupted run (same machine: exact)
  p = subprocess.run(_cmd(wd), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert p.returncode == 0, p.stderr[-3000:]
  assert json.loads((wd / "search" / "summary.json").read_text())["shards_skipped"] == len(written)
  # the tiny models may find no pairs; the searched trees (values, visits, expansions) are compared too
  assert _pairs(wd) == _pairs(uninterrupted) and _trees(wd) == _trees(uninterrupted) and _trees(wd)
  got, want = _report(wd), _report(uninterrupted)
  assert got == want, _diff(got, want)
  ref_w = (uninterrupted / "sft_agent" / "hf" / "model.safetensors").read_bytes()
  assert (wd / "sft_agent" / "hf" / "model.safetensors").read_bytes() == ref_w


def test_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path, capsys):
  dead = subprocess.Popen([PY, "-c", "pass"])
  dead.wait()
  wd = Workdir(tmp_path / "w")
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 1.0}))
  wd.lock()
  assert f"taking over the stale lock of pid {dead.pid}" in capsys.readouterr().out
  assert json.loads((tmp_path / "w" / LOCK).read_text())["pid"] == os.getpid()
  with pytest.raises(InputError, match=f"in use by another run \\(pid {os.getpid()} on host"):
    Workdir(tmp_path / "w").lock()
  wd.unlock()
  assert not (tmp_path / "w" / LOCK).exists()
  # a lock of a live process on another host is never taken over
  (tmp_path / "w" / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 1.0}))
  with pytest.raises(InputError, match="on host elsewhere"):
    wd.lock()


def test_deferred_signal_stops_at_the_safe_point_and_runs_on_stop():
  old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  saved = []
  try:
    preemption.install()
    with preemption.deferred():
      preemption.check(on_stop=lambda: saved.append(0))  # nothing asked: no-op
      os.kill(os.getpid(), signal.SIGTERM)                # recorded, not raised here
      assert preemption.requested() == signal.SIGTERM and saved == []
      with pytest.raises(preemption.Preempted) as e:
        preemption.check(on_stop=lambda: saved.append(1), where="step 7")
    assert saved == [1] and e.value.at_safe_point and e.value.exit_code == 143 and e.value.where == "step 7"
    preemption.reset()
    with pytest.raises(preemption.Preempted) as e:        # outside `deferred`: at once
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
    assert not e.value.at_safe_point and e.value.exit_code == 130
  finally:
    preemption.reset()
    for s, h in old.items():
      signal.signal(s, h)
