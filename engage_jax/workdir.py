"""A pipeline work directory: the config it belongs to, per-stage outputs, done markers, timings.

Layout of DIR:
  config.json                       the resolved config of the run that created DIR
  tokenizer/                        HF tokenizer dir
  sft_agent/ sft_simulator/         hf/ (exported HF model), ckpt/ (Orbax), metrics.jsonl
  eval_sft/ eval_dpo/               dialogues.jsonl, summary.json
  search/                           pairs/*.jsonl, trees/*.json, summary.json
  dpo_agent/                        hf/, ckpt/, metrics.jsonl
  report.json report.md *.png
  stages.json                       {stage: {"done": true, "wall_seconds": s}}

A stage is done when its marker is in stages.json (written last, atomically); a done stage is
skipped; an unfinished one resumes from what it left (checkpoints, search shards).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engage_jax.fileio import atomic_write_json


class Workdir:
  """Paths and stage bookkeeping of one pipeline run."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)

  def path(self, *parts: str) -> Path:
    return self.root.joinpath(*parts)

  # --------------------------------------------------------------- config binding
  def bind_config(self, config_json: dict) -> None:
    """First run: records the config. Later runs: refuses a different config (nothing is touched)."""
    path = self.path("config.json")
    if path.exists():
      old = json.loads(path.read_text())
      if old != config_json:
        diff = sorted(_diff_keys(old, config_json))
        raise ValueError(f"{self.root}: this workdir belongs to another config (differs at "
                         f"{', '.join(diff[:8])}); use a new --workdir or the original config")
      return
    if self.root.exists() and any(p.name != "config.json" for p in self.root.iterdir()):
      raise ValueError(f"{self.root}: exists, is not empty and has no config.json; refusing to write into it")
    atomic_write_json(path, config_json)

  # --------------------------------------------------------------- stages
  def _stages(self) -> dict:
    path = self.path("stages.json")
    return json.loads(path.read_text()) if path.exists() else {}

  def is_done(self, stage: str) -> bool:
    return bool(self._stages().get(stage, {}).get("done"))

  def mark_done(self, stage: str, wall_seconds: float, **info) -> None:
    stages = self._stages()
    stages[stage] = {"done": True, "wall_seconds": round(float(wall_seconds), 3), **info}
    atomic_write_json(self.path("stages.json"), stages)

  def wall_seconds(self) -> dict[str, float]:
    return {k: v["wall_seconds"] for k, v in self._stages().items() if v.get("done")}


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out.extend(_diff_keys(a.get(k), b.get(k), f"{prefix}{k}."))
    return out
  return [] if a == b else [prefix.rstrip(".")]
