"""Choose DPO's epochs, learning rate and β on held-out pairs (never on test chats).

    result = sweep(lambda: load_sft_agent(), ref, pair_files, tok, config.dpo, workdir="DIR/dpo_sweep",
                   learning_rates=(5e-6, 2e-5, 1e-4), betas=(0.1, 0.3), num_epochs=4)
    result["best"]   # {"learning_rate", "beta", "num_epochs", "accuracy", "margin", "log_ratio"}

Every (learning rate, β) trains a fresh policy for `num_epochs` with `heldout_fraction` of the
trees held out (`pair_data.split_heldout`: the same trees for every run) and evaluated every epoch
(`train.heldout.curve`). `choose` picks the point (run, epoch ≥ 1) with the highest held-out pair
accuracy; ties go to the larger implicit log-ratio margin (margin / β, comparable across β), then
to fewer epochs. The epoch is read off the curve of a `num_epochs` run, whose cosine schedule is
longer than a run of that many epochs: retraining with the chosen `num_epochs` is close to, not
the same as, that point. Writes `<workdir>/sweep.json` and `sweep.png` (all curves).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engage_jax import fileio, multihost
from engage_jax.train import heldout
from engage_jax.train.config import DPOConfig
from engage_jax.train.dpo import train_dpo


def choose(runs: Sequence[Mapping]) -> dict:
  """The best point of runs [{"learning_rate", "beta", "curve": [points]}] (see module docstring):
  {"learning_rate", "beta", "num_epochs", "step", "accuracy", "margin", "log_ratio"}."""
  best, best_key = None, None
  for run in runs:
    for p in run["curve"]:
      if p["epoch"] <= 0 or not math.isfinite(p["accuracy"]):
        continue
      log_ratio = p["margin"] / run["beta"]
      key = (p["accuracy"], log_ratio, -p["epoch"])
      if best_key is None or key > best_key:
        best_key = key
        best = {"learning_rate": run["learning_rate"], "beta": run["beta"], "num_epochs": math.ceil(p["epoch"] - 1e-9),
                "step": p["step"], "accuracy": p["accuracy"], "margin": p["margin"], "log_ratio": log_ratio}
  if best is None:
    raise ValueError("dpo sweep: no held-out points after epoch 0 (no held-out pairs?)")
  return best


def sweep(make_policy: Callable[[], Any], ref_model: Any, pairs_paths: Sequence[str], tokenizer, base_cfg: Any, *,
          workdir: str, learning_rates: Sequence[float], betas: Sequence[float], num_epochs: int,
          heldout_fraction: float = 0.1, mesh=None) -> dict:
  """Trains `make_policy()` against `ref_model` (None: a LoRA policy's adapter-off self) for every
  (learning rate, β); returns {"runs": [{"learning_rate", "beta", "curve", "heldout"}], "best"}."""
  if heldout_fraction <= 0:
    raise ValueError("dpo sweep: heldout_fraction must be > 0 (the choice is made on held-out pairs)")
  runs = []
  for lr in learning_rates:
    for beta in betas:
      cfg = DPOConfig.from_any(base_cfg, learning_rate=float(lr), beta=float(beta), num_epochs=int(num_epochs),
                               steps=0, heldout_fraction=heldout_fraction, eval_every=0)
      _, summary = train_dpo(make_policy(), ref_model, list(pairs_paths), tokenizer, cfg,
                             os.path.join(workdir, f"lr{lr:g}_beta{beta:g}"), mesh=mesh)
      if "heldout" not in summary:
        raise ValueError("dpo sweep: nothing was held out (the pairs come from a single tree)")
      h = summary["heldout"]
      runs.append({"learning_rate": float(lr), "beta": float(beta), "curve": h["curve"],
                   "heldout": {k: v for k, v in h.items() if k != "curve"}})
  result = {"runs": runs, "best": choose(runs), "num_epochs": int(num_epochs)}

  def write():
    fileio.atomic_write_text(os.path.join(workdir, "sweep.json"), json.dumps(result, indent=1))
    heldout.plot({f"lr {r['learning_rate']:g}, beta {r['beta']:g}": r["curve"] for r in runs},
                 os.path.join(workdir, "sweep.png"))
  multihost.main_write(write, what=os.path.join(workdir, "sweep.json"))
  return result
