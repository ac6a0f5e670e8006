"""Watching long runs: a stage heartbeat line every few minutes, and TensorBoard scalars.

    with heartbeat("search", every_s=180):       # "[engage_jax] stage search: running for 6m00s ..."
      ...
    tb = Scalars(workdir)                          # <workdir>/tb/events.out.tfevents.* (tensorboardX)
    tb.write(step, {"loss": 1.2, "tokens_per_s": 64.0})

The heartbeat reads the newest line of the stage's `metrics.jsonl` (if any) so the line says where
the run is. `Scalars` is a no-op where tensorboardX is not installed, and writes from process 0 only.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from pathlib import Path
from collections.abc import Mapping

import jax

HEARTBEAT_S = float(os.environ.get("ENGAGE_HEARTBEAT_S", "180"))


def fmt_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _last_metrics(path: Path | None) -> str:
  if path is None or not path.is_file():
    return ""
  try:
    with open(path, "rb") as f:
      f.seek(max(0, path.stat().st_size - 4096))
      lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    rec = json.loads(lines[-1]) if lines else {}
  except (OSError, json.JSONDecodeError):
    return ""
  keys = [k for k in ("step", "split", "loss", "tokens_per_s", "pairs", "trees") if k in rec]
  return ", ".join(f"{k}={rec[k]:.4g}" if isinstance(rec[k], float) else f"{k}={rec[k]}" for k in keys)


@contextlib.contextmanager
def heartbeat(stage: str, every_s: float = HEARTBEAT_S, metrics: Path | None = None):
  """Prints "[engage_jax] stage <stage>: running for <t>" (+ the newest metrics line) every `every_s`
  seconds while the block runs (a daemon thread; `every_s <= 0` turns it off)."""
  if every_s <= 0:
    yield
    return
  stop = threading.Event()
  t0 = time.perf_counter()

  def beat():
    while not stop.wait(every_s):
      last = _last_metrics(metrics)
      print(f"[engage_jax] stage {stage}: running for {fmt_seconds(time.perf_counter() - t0)}"
            + (f" (last: {last})" if last else ""), flush=True)

  thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{stage}")
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join(timeout=1.0)


class Scalars:
  """TensorBoard scalars under `<workdir>/tb` (tensorboardX); `write(step, {name: float})`."""

  def __init__(self, workdir: str | os.PathLike, prefix: str = ""):
    self.prefix = prefix
    self._writer = None
    try:
      if jax.process_index() != 0:
        return
      from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional dependency: the tensorboard writer)
    except ImportError:
      return
    self._writer = SummaryWriter(str(Path(workdir) / "tb"), flush_secs=30)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for k, v in scalars.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        self._writer.add_scalar(f"{self.prefix}{k}", float(v), int(step))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
