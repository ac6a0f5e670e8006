"""A pipeline work directory: per-stage outputs, the config values each stage ran with, done
markers, attempts and timings.

Layout of DIR:
  config.json                       the resolved config of the latest run
  tokenizer/                        HF tokenizer dir
  sft_agent/ sft_simulator/         hf/ (exported HF model), checkpoints/ (Orbax), metrics.jsonl
  eval_sft/ eval_dpo/               dialogues.jsonl, summary.json
  pairs/                            *.jsonl: the search's stepwise pairs (docs/CONTRACTS.md)
  search/                           trees/*.json, search_config.json, summary.json, metrics.jsonl
  dpo_agent/                        hf/, checkpoints/, metrics.jsonl
  report.json report.md *.png
  .lock                             {"pid", "host", "since"} of the run that holds DIR (`lock`)
  stages.json                       {stage: {"done", "wall_seconds" (summed over attempts),
                                     "attempts", "config" (the values of the keys the stage
                                     depends on), "changes" (resumes with changed values), ...}}

A stage is done when its marker is in stages.json (written last, atomically); a done stage is
skipped; an unfinished one resumes from what it left (checkpoints, search shards). Instead of one
lock on the whole config, each stage records the config values it depends on: `conflicts` refuses
a stage only when one of *those* changed (a done stage: any of them; an unfinished one with
outputs: any but the `resumable` ones, e.g. the learning rate after a NaN stop). `clear` removes
stages' outputs for a redo (crash-safe: a killed redo is finished by the next run).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping

from engage_jax import multihost, paths
from engage_jax.config_check import check_workdir
from engage_jax.errors import InputError
from engage_jax.fileio import atomic_write_json

# stage → its output paths under DIR (what a redo removes)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("tokenizer",), "sft_agent": ("sft_agent",), "sft_simulator": ("sft_simulator",),
    "sft_heldout_simulator": ("sft_heldout_simulator",), "eval_sft": ("eval_sft",), "search": ("search", "pairs"), "dpo": ("dpo_agent",), "rounds": ("rounds",), "eval_dpo": ("eval_dpo",),
    "report": ("report.json", "oracle", "report.md", "reward.png", "turns.png", "search.png"),
}


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} → {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def select(flat: Mapping[str, Any], prefixes: Iterable[str], exclude: Iterable[str] = ()) -> dict:
  """The entries of `flat` whose key is or lies under one of `prefixes`, minus `exclude` (keys,
  or patterns "*.name" matching the last component)."""
  prefixes, exclude = tuple(prefixes), tuple(exclude)

  def under(k, p):
    return k == p or k.startswith(p + ".")

  def dropped(k):
    return any(k.rsplit(".", 1)[-1] == e[2:] if e.startswith("*.") else under(k, e) for e in exclude)
  return {k: v for k, v in sorted(flat.items()) if any(under(k, p) for p in prefixes) and not dropped(k)}


def diff(old: Mapping, new: Mapping, common: bool = False) -> dict[str, tuple]:
  """{key: (old, new)} of the keys whose values differ (a missing key reads as None). common:
  only keys both have (a key added to or dropped from the schema since is not a change)."""
  keys = set(old) & set(new) if common else set(old) | set(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


LOCK = ".lock"


def _read_lock(path: Path) -> dict | None:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return data if isinstance(data, dict) else None


def _pid_alive(pid) -> bool:
  """True when process `pid` runs on this host (a zombie counts as gone)."""
  try:
    pid = int(pid)
    os.kill(pid, 0)
  except (TypeError, ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  try:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
  except (OSError, IndexError):
    return True


class Workdir:
  """Paths and stage bookkeeping of one pipeline run (or of one experiment variant's steps).

  links: {first path component: directory} outputs that live in another workdir (an experiment
  variant reads its seed's shared tokenizer and SFT models there); outputs: {stage: output paths}
  for stages that are not the pipeline's (default OUTPUTS; a stage missing from both owns the path
  of its own name)."""

  def __init__(self, root: str | os.PathLike, links: Mapping[str, os.PathLike] | None = None,
               outputs: Mapping[str, tuple[str, ...]] | None = None):
    self.root = paths.path(root)  # pathlib.Path, or etils.epath.Path for gs://... (untested)
    self.links = {k: paths.path(v) for k, v in (links or {}).items()}
    self.outputs = {**OUTPUTS, **(outputs or {})}

  def path(self, *parts: str) -> Path:
    if parts and parts[0] in self.links:
      return self.links[parts[0]].joinpath(*parts[1:])
    return self.root.joinpath(*parts)

  # --------------------------------------------------------------- checks (write nothing)
  def check_root(self) -> None:
    """InputError if DIR is a file, cannot be created, or holds other files but no config.json."""
    check_workdir(self.root)
    others = [p for p in self.root.iterdir() if p.name not in ("logs", LOCK)] if self.root.is_dir() else []
    if others and not self.path("config.json").exists():
      raise InputError("exists, is not empty and has no config.json; refusing to write into it",
                       f"--workdir={self.root}")

  def stages(self) -> dict:
    path = self.path("stages.json")
    if not path.exists():
      return {}
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
      raise InputError(f"unreadable stage record ({e}); fix or delete it (done stages then rerun)",
                       str(path)) from None
    if not isinstance(data, dict):
      raise InputError("the stage record must be a JSON object", str(path))
    return data

  def has_outputs(self, stage: str) -> bool:
    for name in self.outputs.get(stage, (stage,)):
      p = self.path(name)
      if p.is_file() or (p.is_dir() and any(p.iterdir())):
        return True
    return False

  def _legacy_values(self) -> dict | None:
    """The flattened config.json (stages recorded before per-stage values existed)."""
    path = self.path("config.json")
    try:
      return flatten(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None
    except (ValueError, UnicodeDecodeError):
      return None

  def conflicts(self, stage: str, values: Mapping[str, Any], resumable: Iterable[str] = ()
                ) -> dict[str, tuple] | None:
    """The changed keys {key: (recorded, now)} that forbid running / skipping `stage` with
    `values`, or None. A done stage: any change. An unfinished stage with outputs: any change
    outside `resumable`. No outputs, or a pending redo: never."""
    entry = self.stages().get(stage)
    done = bool(entry and entry.get("done") and not entry.get("redo_pending"))
    if entry and entry.get("redo_pending"):
      return None
    if not done and not self.has_outputs(stage):
      return None
    recorded = entry.get("config") if entry else None
    if recorded is None:
      legacy = self._legacy_values()
      if legacy is None:
        return None
      recorded = {k: legacy[k] for k in values if k in legacy}
    changed = diff(recorded, values, common=True)
    if not done:
      changed = {k: v for k, v in changed.items() if k not in set(resumable)}
    return changed or None

  def is_done(self, stage: str) -> bool:
    e = self.stages().get(stage, {})
    return bool(e.get("done")) and not e.get("redo_pending")

  # --------------------------------------------------------------- writes
  def adopt_legacy(self, values: Mapping[str, Mapping[str, Any]]) -> None:
    """Stage entries written before per-stage values existed get theirs from config.json (call
    before `open` replaces it)."""
    legacy, st = self._legacy_values(), self.stages()
    todo = [s for s, e in st.items() if s in values and e.get("config") is None]
    if legacy is None or not todo:
      return
    for s in todo:
      st[s]["config"] = {k: legacy[k] for k in values[s] if k in legacy}
    self._write(st)

  def open(self, config_json: dict) -> None:
    """Creates DIR and records `config_json` as the latest run's config (unchanged: untouched).
    Several processes: process 0 does it, then every process checks that it sees DIR."""
    multihost.main_write(self._open, config_json, what=str(self.path("config.json")))
    multihost.check_shared_dir(self.root)

  def _open(self, config_json: dict) -> None:
    try:
      self.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise InputError(f"cannot create {e.filename or self.root}: {e.strerror}", f"--workdir={self.root}") from None
    path = self.path("config.json")
    if path.exists():
      try:
        if json.loads(path.read_text(encoding="utf-8")) == config_json:
          return
      except (ValueError, UnicodeDecodeError):
        pass
    atomic_write_json(path, config_json)

  def lock(self) -> None:
    """Takes DIR/.lock for this run (process 0 writes it; a refusal is raised on every process).
    A lock held by a live process is an InputError naming its pid and host; a lock whose process is
    gone (killed with -9; same host) is taken over with a line that says so."""
    multihost.main_write(self._lock, what=str(self.path(LOCK)))

  def _lock(self) -> None:
    try:
      self.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise InputError(f"cannot create {e.filename or self.root}: {e.strerror}", f"--workdir={self.root}") from None
    path = self.path(LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
    for _ in range(2):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read_lock(path)
        if holder and holder.get("host") == me["host"] and not _pid_alive(holder.get("pid")):
          print(f"[engage_jax] taking over the stale lock of pid {holder.get('pid')} "
                f"(no longer running) ({path})", flush=True)
          path.unlink(missing_ok=True)
          continue
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} since "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(holder.get('since', 0))))}"
               if holder else "an unreadable lock")
        raise InputError(f"the workdir is in use by another run ({who}); wait for it to end or stop "
                         "it (a lock left by a run on another host that is gone: delete the file)",
                         str(path)) from None
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      return
    raise InputError("could not take the workdir lock (another run took it at the same time)", str(path))

  def unlock(self) -> None:
    """Removes DIR/.lock if this process holds it (process 0; no barrier, so it is safe in a
    `finally` after a failure on another process)."""

    def _unlock():
      path = self.path(LOCK)
      holder = _read_lock(path)
      if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
    multihost.main_only(_unlock)

  def _write(self, stages: dict) -> None:
    atomic_write_json(self.path("stages.json"), stages)

  def clear(self, stages: Iterable[str]) -> list[str]:
    """Removes the outputs and done markers of `stages` (and finishes a killed earlier redo):
    marks them pending first, then moves each output aside and deletes it. Returns the stages
    cleared (on every process; process 0 removes)."""
    st = self.stages()
    todo = sorted(set(stages) | {s for s, e in st.items() if e.get("redo_pending")})
    multihost.main_write(self._clear, stages, what=f"{self.root} redo")
    return todo

  def _clear(self, stages: Iterable[str]) -> list[str]:
    st = self.stages()
    todo = sorted(set(stages) | {s for s, e in st.items() if e.get("redo_pending")})
    if not todo:
      return []
    for s in todo:
      old = st.get(s, {})
      st[s] = {"done": False, "redo_pending": True, "redos": int(old.get("redos", 0)) + (not old.get("redo_pending"))}
    self._write(st)
    for s in todo:
      for name in self.outputs.get(s, ()):
        p = self.path(name)
        if p.is_dir():
          trash = self.path(f".trash-{name}-{os.getpid()}")
          os.replace(p, trash)
          shutil.rmtree(trash)
        elif p.exists():
          p.unlink()
      st[s].pop("redo_pending")
    self._write(st)
    for p in self.root.glob(".trash-*"):  # left by a redo that was killed
      shutil.rmtree(p, ignore_errors=True)
    return todo

  def begin(self, stage: str, values: Mapping[str, Any]) -> dict:
    """Starts an attempt: counts it, records `values` and any change from the last attempt's, and
    adds the time of an attempt that was killed (estimated from its newest output file)."""
    st = self.stages()
    e = st.setdefault(stage, {"done": False})
    if "running_since" in e:
      e["wall_seconds"] = round(float(e.get("wall_seconds", 0.0)) + self._killed_time(stage, e["running_since"]), 3)
      e["killed_attempts"] = int(e.get("killed_attempts", 0)) + 1
    e["attempts"] = int(e.get("attempts", 0)) + 1
    if e.get("config") is not None:
      changed = diff(e["config"], values, common=True)
      if changed:
        e.setdefault("changes", []).append({"attempt": e["attempts"], **{k: list(v) for k, v in changed.items()}})
    e.update(done=False, config=dict(values), running_since=time.time())
    self._write(st)
    return e

  def _killed_time(self, stage: str, since: float) -> float:
    newest = since
    for name in self.outputs.get(stage, ()):
      p = self.path(name)
      for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []):
        try:
          newest = max(newest, f.stat().st_mtime)
        except OSError:
          pass
    return max(0.0, newest - since)

  def end(self, stage: str, wall_seconds: float, done: bool, **info) -> None:
    """Ends the attempt begun by `begin`: adds its time; `done` marks the stage done."""
    st = self.stages()
    e = st.setdefault(stage, {})
    e.pop("running_since", None)
    e["wall_seconds"] = round(float(e.get("wall_seconds", 0.0)) + float(wall_seconds), 3)
    e["attempts"] = max(int(e.get("attempts", 0)), 1)
    e["done"] = bool(done)
    e.update(info)
    self._write(st)

  def wall_seconds(self) -> dict[str, float]:
    """{stage: seconds summed over its attempts} of the done stages."""
    return {k: v["wall_seconds"] for k, v in self.stages().items() if v.get("done") and not v.get("redo_pending")}

  def attempts(self) -> dict[str, int]:
    return {k: int(v.get("attempts", 1)) for k, v in self.stages().items() if v.get("done")}
