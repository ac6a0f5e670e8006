"""DPO on held-out pairs: the per-epoch curves of held-out pair accuracy and implicit margin.

`train_dpo` with `heldout_fraction > 0` holds out whole search trees (`pair_data.split_heldout`)
and evaluates them every epoch (and at the start); `curve(workdir, updates_per_epoch)` reads
those eval lines back from `<workdir>/metrics.jsonl`:

    [{"epoch": 0.0, "step": 0, "accuracy": 0.0, "margin": 0.0, "loss": 0.693, ...}, ...]

accuracy = share of held-out pairs whose implicit reward β·(log π − log π_ref) is higher for the
chosen than for the rejected reply (TRL's rewards/accuracies: 0 at the start, where the margins are
exactly 0); margin = the mean implicit margin (rewards/margins), whose growth is the other signal.
`plot(curves, path)` draws them (matplotlib, optional).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

from engage_jax import fileio
from engage_jax.train.loop import read_metrics

CURVE_FILE = "heldout_curve.json"


def curve(workdir: str, updates_per_epoch: int) -> list[dict]:
  """The held-out eval points of a DPO run, in step order (see module docstring)."""
  out = []
  for rec in read_metrics(workdir, "eval"):
    out.append({"epoch": rec["step"] / max(updates_per_epoch, 1), "step": int(rec["step"]),
                "accuracy": float(rec.get("rewards/accuracies", float("nan"))),
                "margin": float(rec.get("rewards/margins", float("nan"))),
                "loss": float(rec.get("loss", float("nan"))),
                "logps_chosen": float(rec.get("logps/chosen", float("nan"))),
                "logps_rejected": float(rec.get("logps/rejected", float("nan")))})
  return out


def write_curve(workdir: str, points: list[dict], info: Mapping) -> str:
  """`<workdir>/heldout_curve.json` ({"points", **info}) and heldout_curve.png beside it."""
  path = os.path.join(workdir, CURVE_FILE)
  fileio.atomic_write_text(path, json.dumps({**info, "points": points}, indent=1))
  plot({"held-out": points}, os.path.join(workdir, "heldout_curve.png"))
  return path


def plot(curves: Mapping[str, list[dict]], path: str) -> bool:
  """Held-out accuracy and margin against epochs, one line per named curve; False (nothing
  written) without matplotlib."""
  try:
    import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency: matplotlib)
  except ImportError:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for name, pts in curves.items():
    ep = [p["epoch"] for p in pts]
    axes[0].plot(ep, [p["accuracy"] for p in pts], marker="o", label=name)
    axes[1].plot(ep, [p["margin"] for p in pts], marker="o", label=name)
  axes[0].set(xlabel="epoch", ylabel="held-out pair accuracy", ylim=(-0.02, 1.02))
  axes[1].set(xlabel="epoch", ylabel="held-out implicit margin (nats x beta)")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
