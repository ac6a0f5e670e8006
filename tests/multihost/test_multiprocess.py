"""The pipeline under JAX's multi-controller runtime: 2 processes x 2 forced CPU devices (gloo
collectives, joined on 127.0.0.1 by launch/local_multiprocess.py) against 1 process x 4 devices,
same mesh (data=4), at a reduced sandbox size.

One pair of runs is shared by the equality, single-writer and kill/resume tests. Every child has a
bounded timeout and is killed by its pid.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.numerics import subprocess_env, worst_rel_norm_diff

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

# Smaller than tests/test_pipeline.py's SMALL: the models need not learn, only every stage must run
# (and the search must find pairs) so that the two runs can be compared.
TINY = [
    "--config.sft.agent_steps=16", "--config.sft.simulator_steps=32", "--config.sft.eval_every=0",
    "--config.sft.checkpoint_every=16", "--config.sft.log_every=8",
    "--config.search.n_conditions=8", "--config.search.trees_per_shard=2",
    "--config.dpo.steps=2",
    "--config.eval.n_conditions=4", "--config.eval.samples_per_condition=1", "--config.eval.max_agent_turns=2",
    "--config.mesh.data=4",
]
RUN_TIMEOUT_S = 900     # one whole tiny pipeline (loaded 2-core CI machine)
# Trained weights of 1 vs 2 processes: relative norm difference (tests/numerics.py).
REL_WEIGHTS = 1e-5


def _env(devices: int, **extra) -> dict:
  return subprocess_env(devices, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)


def _nice() -> list[str]:
  return ["nice", "-n", "19"] if shutil.which("nice") else []


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
  """Runs `cmd`; on timeout kills its process group by id and fails."""
  proc = subprocess.Popen(_nice() + cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}")
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _multi(launcher: str, workdir: Path, extra: list[str], *, n: int = 2, d: int = 2, env_extra=None,
           timeout: float = RUN_TIMEOUT_S) -> list[str]:
  return [PY, "launch/local_multiprocess.py", f"--num_processes={n}", f"--devices_per_process={d}",
          f"--timeout_s={timeout - 30:.0f}", "--", launcher, "--config=configs/sandbox_es.py",
          f"--workdir={workdir}", *extra]


def _logs(workdir: Path) -> str:
  return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").glob("*.log")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one-process workdir, two-process workdir, write-log dir, wall seconds of each)."""
  base = tmp_path_factory.mktemp("mh")
  one, two, wlog = base / "one", base / "two", base / "writes"
  t0 = time.perf_counter()
  p = _run([PY, "launch/pipeline.py", "--config=configs/sandbox_es.py", f"--workdir={one}", *TINY],
           _env(4), RUN_TIMEOUT_S)
  assert p.returncode == 0, p.stderr[-4000:]
  t1 = time.perf_counter()
  p = _run(_multi("launch/pipeline.py", two, TINY), _env(1, ENGAGE_WRITE_LOG=str(wlog)), RUN_TIMEOUT_S)
  assert p.returncode == 0, p.stderr[-2000:] + _logs(two)
  t2 = time.perf_counter()
  print(f"\n[multihost] 1 process x 4 devices: {t1 - t0:.0f}s; 2 processes x 2 devices: {t2 - t1:.0f}s")
  return one, two, wlog


def _pairs(wd: Path) -> dict[str, bytes]:
  return {f.name: f.read_bytes() for f in sorted((wd / "pairs").glob("*.jsonl"))}


def _params(path: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  return load_file(str(path))


def _report(wd: Path) -> dict:
  rep = json.loads((wd / "report.json").read_text())
  rep.pop("wall_seconds")
  return rep


def test_two_processes_equal_one_process(runs):
  one, two, _ = runs
  pa, pb = _pairs(one), _pairs(two)
  n_pairs = sum(v.count(b"\n") for v in pa.values())
  assert n_pairs > 0, "the search found no pairs"
  assert pa == pb
  assert _report(one) == _report(two)
  for d in ("eval_sft", "eval_dpo"):
    assert (one / d / "dialogues.jsonl").read_bytes() == (two / d / "dialogues.jsonl").read_bytes(), d
  # 1 and 2 processes reduce gradients in another order, so trained weights agree to rounding, not
  # bits: bound ||delta|| relative to each tensor's norm (tests/numerics.py says why an absolute
  # element bound fails on some CPUs). A lost step or a wrongly averaged gradient is >= 1e-3.
  worst = {}
  for model in ("sft_agent", "sft_simulator", "dpo_agent"):
    a, b = _params(one / model / "hf" / "model.safetensors"), _params(two / model / "hf" / "model.safetensors")
    worst[model] = worst_rel_norm_diff(a, b)
  print(f"\n[multihost] params worst ||delta||/||w|| (1 vs 2 processes): {worst}; pairs: "
        f"{n_pairs} identical; report identical")
  assert max(v for _, v in worst.values()) < REL_WEIGHTS, worst
  assert (two / "tokenizer" / "tokenizer.json").read_bytes() == (one / "tokenizer" / "tokenizer.json").read_bytes()


def _events(wlog: Path, process: int) -> list[dict]:
  path = wlog / f"writes-{process}.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _final(e: dict) -> str:
  return e.get("dst") or e["path"]


def _orbax(path: str) -> bool:
  return "/checkpoints/" in path or path.endswith("/checkpoints")


def test_only_process_0_writes_and_nothing_twice(runs):
  _, two, wlog = runs
  root = str(two.resolve())
  p0, p1 = _events(wlog, 0), _events(wlog, 1)
  assert p0, "no write log from process 0"
  # process 1 writes nothing of its own; Orbax's per-process array metadata is Orbax's business
  assert [e for e in p1 if not _orbax(_final(e))] == []
  # each output file is put in place once (atomic renames / plain writes), by process 0
  once = re.compile(r"/((pairs|search/trees)/shard-\d+\.jsonl?|[^/]+/hf/model\.safetensors|"
                    r"[^/]+/hf/config\.json|eval_(sft|dpo)/(dialogues\.jsonl|summary\.json)|report\.(json|md)|"
                    r"search/(summary|search_config)\.json|tokenizer/tokenizer_config\.json|[a-z]+\.png)$")
  finals = [_final(e) for e in p0 if e["event"] in ("open", "os.rename") and not _final(e).split("/")[-1]
            .startswith(".tmp-") and not _final(e).endswith(".tmp")]
  counted = {}
  for f in finals:
    if f.startswith(root) and once.search(f[len(root):]):
      counted[f] = counted.get(f, 0) + 1
  assert len([f for f in counted if "/pairs/shard-" in f]) == 4
  assert {f: c for f, c in counted.items() if c != 1} == {}
  assert len(counted) >= 20, sorted(counted)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
  t0 = time.monotonic()
  while not path.exists():
    if proc.poll() is not None or time.monotonic() - t0 > timeout:
      raise AssertionError(f"{path} did not appear (launcher rc={proc.poll()})")
    time.sleep(0.1)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:  # a zombie (exited, not yet reaped by its parent) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
  except (OSError, IndexError):
    return False


def test_sigkill_mid_search_then_resume(runs, tmp_path):
  """SIGKILL process 1 right after the first search shard is written: the launcher sees process 1
  die, stops process 0 itself (not by its own timeout) and exits non-zero with both processes gone;
  rerunning resumes (the finished shard is skipped) and the pairs equal the uninterrupted run's.
  No wall-clock bound: RUN_TIMEOUT_S only keeps a hang from blocking the suite."""
  _, two, _ = runs
  wd = tmp_path / "kill"
  shutil.copytree(two, wd, ignore=shutil.ignore_patterns("logs", "search", "pairs"))  # the SFT stages, done
  stages = json.loads((wd / "stages.json").read_text())
  (wd / "stages.json").write_text(json.dumps({k: v for k, v in stages.items() if k not in
                                              ("search", "dpo", "eval_dpo", "report")}))
  out = tmp_path / "launcher.out"
  with open(out, "w") as f:
    proc = subprocess.Popen(_nice() + _multi("launch/search.py", wd, TINY), cwd=REPO,
                            env=_env(1), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    t0 = time.monotonic()
    while not re.search(r"pids (\d+) (\d+)", out.read_text()):
      assert proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT_S, out.read_text()
      time.sleep(0.1)
    pids = [int(x) for x in re.search(r"pids (\d+) (\d+)", out.read_text()).groups()]
    _wait_for(wd / "pairs" / "shard-00000.jsonl", proc, RUN_TIMEOUT_S)
    os.kill(pids[1], signal.SIGKILL)
    rc = proc.wait(timeout=RUN_TIMEOUT_S)
    alive = [p for p in pids if _alive(p)]
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  log = out.read_text()
  assert alive == [], f"processes {alive} outlived the launcher"
  # process 1 (-9), or process 0 when its collective failed within the same 0.2 s poll
  assert re.search(r"process [01] exited with -?\d+; stopped the others", log), log[-2000:]
  assert rc == 1, (rc, log[-2000:])  # not 124: the launcher's own timeout did not fire
  done_before = sorted(p.name for p in (wd / "pairs").glob("shard-*.jsonl"))
  assert 1 <= len(done_before) < 4, done_before
  p = _run(_multi("launch/search.py", wd, TINY), _env(1), RUN_TIMEOUT_S)
  assert p.returncode == 0, p.stderr[-2000:] + _logs(wd)
  summary = json.loads((wd / "search" / "summary.json").read_text())
  assert summary["shards_skipped"] == len(done_before)
  assert _pairs(wd) == _pairs(two)


def test_sigterm_to_one_process_stops_both_at_the_same_step_then_resume(tmp_path):
  """A preemption notice that reaches one host only: SIGTERM to process 1 while the agent trains.
  Both processes stop at the same step (the request is all-gathered at every safe point), write
  that step's checkpoint, print the one stop line and exit 143, and so does the launcher; none
  hangs. The rerun resumes from that step and finishes."""
  wd = tmp_path / "pre"
  flags = ["--stages=tokenizer,sft_agent", "--config.sft.agent_steps=120", "--config.sft.eval_every=0",
           "--config.sft.checkpoint_every=1000", "--config.sft.log_every=1", "--config.mesh.data=2"]
  out = tmp_path / "launcher.out"
  with open(out, "w") as f:
    proc = subprocess.Popen(_nice() + _multi("launch/pipeline.py", wd, flags, d=1), cwd=REPO, env=_env(1),
                            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
  metrics = wd / "sft_agent" / "metrics.jsonl"
  try:
    t0 = time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
      assert proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT_S, out.read_text() + _logs(wd)
      time.sleep(0.05)
    pids = [int(x) for x in re.search(r"pids (\d+) (\d+)", out.read_text()).groups()]
    os.kill(pids[1], signal.SIGTERM)
    rc = proc.wait(timeout=RUN_TIMEOUT_S)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert rc == 128 + signal.SIGTERM, (rc, out.read_text()[-2000:] + _logs(wd))
  steps = []
  for i in (0, 1):
    log = (wd / "logs" / f"process-{i}.log").read_text()
    m = re.search(r"stopped: stage sft_agent stopped by SIGTERM at a safe point \(step (\d+);.*resume", log)
    assert m and "Traceback" not in log, log[-2000:]
    steps.append(int(m.group(1)))
  assert steps[0] == steps[1] < 120, steps
  assert (wd / "sft_agent" / "checkpoints" / str(steps[0])).is_dir()
  assert not (wd / ".lock").exists()
  p = _run(_multi("launch/pipeline.py", wd, flags, d=1), _env(1), RUN_TIMEOUT_S)
  assert p.returncode == 0, p.stderr[-2000:] + _logs(wd)
  assert json.loads((wd / "stages.json").read_text())["sft_agent"]["done"]
  assert f"checkpoints at step {steps[0]}" in (wd / "logs" / "process-0.log").read_text(), _logs(wd)


# ------------------------------------------------------------------------- bad input (no JAX)
@pytest.mark.parametrize("flags,needle", [
    (["--distributed", "--num_processes=2", "--process_id=0"], "--coordinator_address"),
    (["--distributed", "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
     "--process_id=2 is out of range 0..1"),
    (["--distributed", "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=-1"],
     "out of range"),
    (["--distributed", "--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], "host:port"),
    (["--num_processes=2", "--process_id=0"], "need(s) --distributed"),
])
def test_bad_distributed_flags_are_one_line_before_jax(tmp_path, flags, needle):
  wd = tmp_path / "x"
  # JAX_PLATFORMS=nonexistent: had JAX started a backend, the error would be a different one
  p = _run([PY, "launch/pipeline.py", "--config=configs/sandbox_es.py", f"--workdir={wd}", *flags],
           dict(os.environ, JAX_PLATFORMS="nonexistent"), 120)
  assert p.returncode == 2, p.stderr
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
  assert not wd.exists()


def test_local_multiprocess_bad_args(tmp_path):
  for args, needle in ((["--num_processes=0", "--", "launch/pipeline.py"], "--num_processes=0"),
                       (["--", "launch/nope.py"], "launcher script"),
                       (["--num_processes=2"], "usage"),
                       (["--", "launch/pipeline.py", "--process_id=1"], "--process_id")):
    p = _run([PY, "launch/local_multiprocess.py", *args], dict(os.environ), 60)
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)


def test_mesh_larger_than_global_devices(tmp_path):
  wd = tmp_path / "m"
  p = _run(_multi("launch/pipeline.py", wd, ["--config.mesh.data=8"], n=2, d=1, timeout=240), _env(1), 240)
  assert p.returncode == 2, p.stderr
  log = (wd / "logs" / "process-0.log").read_text()
  assert re.search(r"error: .*needs 8 devices, there are 2", log), log[-2000:]
  assert not (wd / "config.json").exists()


def test_workdir_not_shared_is_detected(tmp_path):
  """Process i sees only `<tmp>/p<i>` (as on hosts without a shared filesystem): process 1 fails on
  process 0's marker, naming the workdir."""
  p = _run([PY, "launch/local_multiprocess.py", "--num_processes=2", "--devices_per_process=1",
            f"--log_dir={tmp_path / 'logs'}", "--timeout_s=200", "--", "tests/multihost/unshared_dir.py",
            f"--root={tmp_path}"], _env(1), 240)
  assert p.returncode != 0
  log = (tmp_path / "logs" / "process-1.log").read_text()
  assert "cannot see process 0's marker file" in log and "--workdir=" in log, log[-2000:]


def test_fsdp_mesh_sft_equal(tmp_path):
  """mesh data=2 x fsdp=2 (parameters sharded over fsdp, gathered for saving): the SFT agent of 2
  processes x 2 devices equals that of 1 process x 4 devices. Reduced to 4 steps so that it fits in
  CI: the sharded gathers, the cross-process gradient reduction and the save all run every step."""
  flags = ["--stages=tokenizer,sft_agent", "--config.sft.agent_steps=4", "--config.sft.eval_every=0",
           "--config.sft.checkpoint_every=4", "--config.sft.log_every=2", "--config.mesh.data=2",
           "--config.mesh.fsdp=2"]
  one, two = tmp_path / "one", tmp_path / "two"
  p = _run([PY, "launch/pipeline.py", "--config=configs/sandbox_es.py", f"--workdir={one}", *flags], _env(4), 600)
  assert p.returncode == 0, p.stderr[-3000:]
  p = _run(_multi("launch/pipeline.py", two, flags, timeout=600), _env(1), 600)
  assert p.returncode == 0, p.stderr[-2000:] + _logs(two)
  a, b = (_params(w / "sft_agent" / "hf" / "model.safetensors") for w in (one, two))
  name, worst = worst_rel_norm_diff(a, b)
  print(f"\n[multihost] fsdp=2 SFT agent params worst ||delta||/||w||: {worst:.3g} ({name})")
  assert worst < REL_WEIGHTS, (name, worst)
