"""Statistics of the human study: the report's `human` block.

Unit of analysis: a rated session (one rater × one held-out condition, both agents rated).
- per item and model: mean with a 95% percentile bootstrap CI (`evaluate.bootstrap_ci`);
- per item, DPO − SFT: the two-sided paired sign-flip permutation test (`evaluate.paired_test`,
  exact up to 16 sessions) over sessions, and a bootstrap CI of the mean difference;
- preference: the rate of sessions preferring DPO with a bootstrap CI and an exact two-sided
  binomial (sign) test against 0.5;
- Spearman's rho (average ranks for ties) between each item and the simulator's engagement of the
  same model on the same condition (mean reward of `eval_<model>/dialogues.jsonl` per condition id);
- raters, included and excluded sessions (with reasons), reply latency p50/p95.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from engage_jax import evaluate as ev
from engage_jax.human_eval.items import Item

PAIRED_TEST = "paired sign-flip permutation test, two-sided, over rated sessions (DPO - SFT)"
PREFERENCE_TEST = "exact binomial sign test, two-sided, H0: P(prefer DPO) = 0.5"


def rankdata(x: Sequence[float]) -> np.ndarray:
  """Ranks 1..n, ties get their average rank (scipy.stats.rankdata's 'average')."""
  a = np.asarray(x, np.float64)
  _, inv, cnt = np.unique(a, return_inverse=True, return_counts=True)
  ends = np.cumsum(cnt)
  return ((ends - cnt + 1 + ends) / 2.0)[inv.reshape(-1)]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's rho (Pearson of average ranks); None when either side is constant or n < 3."""
  a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"spearman: x and y must be 1-D of one length, got {a.shape} and {b.shape}")
  if a.size < 3:
    return None
  ra, rb = rankdata(a), rankdata(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = math.sqrt(float(ra @ ra) * float(rb @ rb))
  return None if den == 0 else float(ra @ rb / den)


def binom_two_sided(k: int, n: int) -> float:
  """Exact two-sided binomial p at p0 = 0.5: min(1, 2 P(X <= min(k, n - k)))."""
  if n == 0:
    return 1.0
  m = min(k, n - k)
  tail = sum(math.comb(n, i) for i in range(m + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def _ci(values, n_boot: int, seed: int) -> list[float]:
  lo, hi = ev.bootstrap_ci(values, n_boot=n_boot, seed=seed)
  return [lo, hi]


def _percentile(values: Sequence[float], q: float) -> float | None:
  return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


def sim_engagement(dialogues_by_model: Mapping[str, Sequence]) -> dict[str, dict[str, float]]:
  """{model: {condition id: mean simulated reward}} from evaluate's dialogues (unparsed left out)."""
  out = {}
  for model, ds in dialogues_by_model.items():
    acc: dict[str, list[float]] = {}
    for d in ev.scored(ds):
      acc.setdefault(ev.condition_id(d), []).append(float(d.outcome["reward"]))
    out[model] = {c: float(np.mean(v)) for c, v in acc.items()}
  return out


def human_block(sessions: Sequence[Mapping], task_items: Sequence[Item], *,
                sim: Mapping[str, Mapping[str, float]] | None = None, latencies_ms: Sequence[float] = (),
                invites: Mapping[str, int] | None = None, seed: int = 0, n_boot: int = 10_000) -> dict:
  """The `human` block from `Store.sessions()` rows (see the module docstring)."""
  keys = [it.key for it in task_items]
  rated = [s for s in sessions if s["rated"] and all(k in s["ratings"].get(m, {}) for m in ("sft", "dpo")
                                                      for k in keys)]
  started = [s for s in sessions if not s["rated"] and sum(s["turns"].values()) > 0]
  untouched = [s for s in sessions if not s["rated"] and sum(s["turns"].values()) == 0]
  block = {"n_raters": len({s["rater_id"] for s in rated}), "n_sessions": len(rated),
           "n_conditions": len({s["condition_id"] for s in rated}),
           "excluded": {"count": len(started), "reasons": {"started, not rated": len(started)}},
           "not_started": len(untouched), "items": {}, "preference": None, "spearman": {},
           "p_value_test": PAIRED_TEST}
  if invites:
    block["invites"] = dict(invites)
  if latencies_ms:
    block["reply_latency_ms"] = {"n": len(latencies_ms), "p50": _percentile(latencies_ms, 50),
                                 "p95": _percentile(latencies_ms, 95)}
  if not rated:
    return block
  for it in task_items:
    a = np.asarray([s["ratings"]["sft"][it.key] for s in rated])
    b = np.asarray([s["ratings"]["dpo"][it.key] for s in rated])
    block["items"][it.key] = {
        "label": it.label, "scale": [it.lo, it.hi], "n": int(a.size),
        "sft": {"mean": float(a.mean()), "ci95": _ci(a, n_boot, seed)},
        "dpo": {"mean": float(b.mean()), "ci95": _ci(b, n_boot, seed)},
        "diff_mean": float((b - a).mean()), "diff_ci95": _ci(b - a, n_boot, seed),
        "p_value": float(ev.paired_test(a, b, seed=seed, alternative="two-sided"))}
  prefs = np.asarray([1.0 if s["preferred"] == "dpo" else 0.0 for s in rated])
  k = int(prefs.sum())
  block["preference"] = {"n": int(prefs.size), "dpo": k, "sft": int(prefs.size) - k,
                         "dpo_rate": float(prefs.mean()), "ci95": _ci(prefs, n_boot, seed),
                         "p_value": binom_two_sided(k, int(prefs.size)), "test": PREFERENCE_TEST}
  if sim:
    for it in task_items:
      xs, ys = [], []
      for s in rated:
        for m in ("sft", "dpo"):
          v = (sim.get(m) or {}).get(s["condition_id"])
          if v is not None:
            xs.append(s["ratings"][m][it.key])
            ys.append(v)
      block["spearman"][it.key] = {"rho": spearman(xs, ys) if xs else None, "n": len(xs),
                                   "against": "simulated engagement of the same model on the same condition"}
  return block
