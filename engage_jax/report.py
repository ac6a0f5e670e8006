"""The run's report: report.json (the public contract), report.md and PNG plots.

report.json (docs/CONTRACTS.md) has exactly these keys, plus an optional "extra" object:

  {"task": "es"|"p4g",
   "sft": M, "dpo": M,          # M = {"n": int, "reward_mean": float, "ci95": [lo, hi], "mean_turns": float}
   "pairs": int,                # preference pairs used for DPO
   "p_value": float,            # SFT vs DPO, see below
   "wall_seconds": {stage: s}}

`reward_mean` is the engagement rate for ES and the mean donation ($) for P4G; `ci95` a percentile
bootstrap interval of the mean. `p_value` is a **two-sided paired sign-flip permutation test** on
per-condition mean rewards (DPO − SFT; both models are evaluated on the same held-out conditions
with the same seeds; exact for ≤ 16 conditions, else 20,000 random sign patterns). The one-sided
p (H1: DPO > SFT) and, for binary ES rewards, an exact McNemar test on dialogue-level pairs are in
`extra`; so are the unparsed P4G outcomes per run (`extra.unparsed`: count, total, rate), which
every statistic leaves out rather than counting as $0. If the runs share no condition ids the test falls back to an unpaired two-sample
permutation test and `extra.p_value_test` says so.

    report = build_report("es", sft_dialogues, dpo_dialogues, pairs_count=812,
                          wall_seconds={"sft": 120.0, "search": 300.0, "dpo": 60.0})
    write_report(workdir, report, sft_dialogues=..., dpo_dialogues=..., search_stats=...)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from engage_jax import evaluate as ev, multihost
from engage_jax.data.dialogue import Dialogue
from engage_jax.fileio import atomic_write_text

REPORT_KEYS = ("task", "sft", "dpo", "pairs", "p_value", "wall_seconds")
OPTIONAL_KEYS = ("extra", "oracle")  # oracle: sandbox only (engage_jax.pipeline.oracle_report)
MODEL_KEYS = ("n", "reward_mean", "ci95", "mean_turns")
TASKS = ("es", "p4g")
P_VALUE_TEST = ("paired sign-flip permutation test, two-sided, on per-condition mean reward "
                "differences (DPO - SFT)")
UNPAIRED_TEST = "unpaired two-sample permutation test, two-sided, on dialogue rewards (no shared conditions)"
PAPER_REFERENCE = {
    "es": {"metric": "success rate", "sft": 0.6406, "dpo": 0.8047, "text": "ES success 64.06% -> 80.47%"},
    "p4g": {"metric": "mean donation ($)", "sft": 0.58, "dpo": 1.29, "text": "P4G donation $0.58 -> $1.29"},
}
REWARD_NAME = {"es": "engagement rate", "p4g": "mean donation ($)"}


# ----------------------------------------------------------------------------- building
def search_stats_from_pairs(pairs: Sequence[Mapping]) -> dict:
  """Search statistics from pairs.jsonl rows (their "meta"): margins [P], depths [P], values, trees."""
  metas = [p.get("meta", {}) for p in pairs]
  def col(key, cast=float):
    return [cast(m[key]) for m in metas if m.get(key) is not None]
  return {"pairs": len(pairs), "margins": col("margin"), "depths": col("depth", int),
          "chosen_values": col("chosen_value"), "rejected_values": col("rejected_value"),
          "trees": len({str(m.get("tree_id")) for m in metas if "tree_id" in m})}


def _search_summary(stats: Mapping) -> dict:
  """JSON-friendly scalars of search_stats (lists summarised, scalars kept)."""
  out = {}
  for k, v in stats.items():
    if isinstance(v, (list, tuple, np.ndarray)):
      arr = np.asarray(v, np.float64)
      if arr.size:
        out[f"{k}_mean"] = float(arr.mean())
        out[f"{k}_count"] = int(arr.size)
    elif isinstance(v, (bool, int, float, str)) or v is None:
      out[k] = v.item() if isinstance(v, np.generic) else v
  return out


def unparsed_stats(sft_dialogues: Sequence[Dialogue], dpo_dialogues: Sequence[Dialogue]) -> dict:
  """{"sft"|"dpo": {"count", "total", "rate"}}: P4G outcomes that gave no donation (left out of
  every statistic, never counted as $0)."""
  out = {}
  for name, ds in (("sft", sft_dialogues), ("dpo", dpo_dialogues)):
    k, n = ev.unparsed_count(ds), len(ds)
    out[name] = {"count": int(k), "total": int(n), "rate": float(k / n) if n else 0.0}
  return out


def _unpaired_test(a: np.ndarray, b: np.ndarray, seed: int, n_perm: int = 20_000) -> float:
  """Two-sided permutation test of mean(b) - mean(a) with random relabellings (+1 correction)."""
  pooled = np.concatenate([a, b])
  obs = abs(b.mean() - a.mean())
  rng = np.random.default_rng(seed)
  count = 0
  chunk = max(1, 4_000_000 // pooled.size)
  for start in range(0, n_perm, chunk):
    m = min(chunk, n_perm - start)
    perm = rng.permuted(np.broadcast_to(pooled, (m, pooled.size)), axis=1)
    diff = np.abs(perm[:, a.size:].mean(axis=1) - perm[:, :a.size].mean(axis=1))
    count += int(np.sum(diff >= obs - 1e-12))
  return (1 + count) / (1 + n_perm)


def simulator_behaviour(task: str, dialogues: Sequence[Dialogue]) -> dict:
  """What the simulated user did: how often it ended the chat itself (END marker, not the turn cap),
  said the engaged phrase in its last turns (ES) / stated a parsable donation (P4G), and the
  donations it stated. Evidence for why DPO did or did not move the reward."""
  n = len(dialogues)
  if not n:
    return {"n": 0}
  out = {"n": n, "ended_by_simulator": sum(bool(d.outcome.get("terminal")) for d in dialogues) / n,
         "mean_user_words": float(np.mean([np.mean([len(t.text.split()) for t in d.turns if t.role == "user"] or [0])
                                           for d in dialogues]))}
  if task == "es":
    out["engaged"] = sum(float(d.outcome.get("reward") or 0.0) > 0 for d in dialogues) / n
  else:
    key = "sampled_donation" if ev.has_sampled_readout(dialogues) else "donation"   # expected readout: the sampled answer
    stated = [d.outcome.get(key) for d in dialogues if d.outcome.get(key) is not None]
    out["donation_stated"] = len(stated) / n
    out["donation_nonzero"] = sum(x > 0 for x in stated) / n
    mass = [d.outcome["outcome_mass"] for d in dialogues if "outcome_mass" in d.outcome]
    if mass:  # expected readout: the share of the simulator's answer that the canonical lines cover
      out["outcome_mass_mean"] = float(np.mean(mass))
  return out


def sampled_readout(sft_dialogues: Sequence[Dialogue], dpo_dialogues: Sequence[Dialogue], *, seed: int = 0,
                    n_boot: int = 10_000) -> dict:
  """P4G with reward.readout "expected" (sft / dpo are then the expected readout): the sampled, parsed
  outcome beside it, the paper's metric: {"sft": M, "dpo": M, "p_value", "unparsed": {sft, dpo}}."""
  a, b = ev.sampled_view(sft_dialogues), ev.sampled_view(dpo_dialogues)
  out = {"sft": ev.summarize(a, n_boot=n_boot, seed=seed), "dpo": ev.summarize(b, n_boot=n_boot, seed=seed),
         "unparsed": unparsed_stats(a, b)}
  x, y, _ = ev.paired_rewards(a, b)
  out["p_value"] = ev.paired_test(x, y, seed=seed, alternative="two-sided")
  return out


def heldout_simulator(sft_dialogues: Sequence[Dialogue], dpo_dialogues: Sequence[Dialogue], *, seed: int = 0,
                      n_boot: int = 10_000) -> dict:
  """The SFT and DPO agents evaluated against the held-out simulator (config.eval.heldout_simulator;
  same conditions and seeds as the main evaluation): {"sft": M, "dpo": M, "p_value",
  "n_paired_conditions"} with M = `evaluate.summarize` and p the same paired test as the report's."""
  x, y, ids = ev.paired_rewards(sft_dialogues, dpo_dialogues)
  return {"sft": ev.summarize(sft_dialogues, n_boot=n_boot, seed=seed),
          "dpo": ev.summarize(dpo_dialogues, n_boot=n_boot, seed=seed),
          "p_value": ev.paired_test(x, y, seed=seed, alternative="two-sided"), "n_paired_conditions": len(ids)}


def rounds_table(sft_dialogues: Sequence[Dialogue], round_dialogues: Sequence[Sequence[Dialogue]],
                 pairs: Sequence[int], *, seed: int = 0, n_boot: int = 10_000) -> list[dict]:
  """config.search_dpo_rounds > 1: one row per round r (1-based) of its DPO agent on the evaluation
  conditions: {"round", "pairs", "reward_mean", "ci95", "mean_turns", "n", "p_vs_sft", "p_vs_previous"}
  (paired sign-flip tests; p_vs_previous: against round r - 1, None for round 1)."""
  rows, prev = [], None
  for r, (dialogues, n_pairs) in enumerate(zip(round_dialogues, pairs, strict=True), start=1):
    row = {"round": r, "pairs": int(n_pairs), **ev.summarize(dialogues, n_boot=n_boot, seed=seed)}
    a, b, _ = ev.paired_rewards(sft_dialogues, dialogues)
    row["p_vs_sft"] = ev.paired_test(a, b, seed=seed, alternative="two-sided")
    row["p_vs_previous"] = None
    if prev is not None:
      a, b, _ = ev.paired_rewards(prev, dialogues)
      row["p_vs_previous"] = ev.paired_test(a, b, seed=seed, alternative="two-sided")
    rows.append(row)
    prev = dialogues
  return rows


def build_report(task: str, sft_dialogues: Sequence[Dialogue], dpo_dialogues: Sequence[Dialogue],
                 pairs_count: int, wall_seconds: Mapping[str, float], search_stats: Mapping | None = None,
                 *, seed: int = 0, n_boot: int = 10_000) -> dict:
  """The report dict (schema above) from simulated SFT and DPO dialogues.

  sft_dialogues / dpo_dialogues: outputs of `engage_jax.evaluate.evaluate` with the same cfg and seed.
  search_stats: optional (e.g. `search_stats_from_pairs`); its scalars/means go into extra.search.
  """
  if task not in TASKS:
    raise ValueError(f"build_report: task must be one of {TASKS}, got {task!r}")
  sft = ev.summarize(sft_dialogues, n_boot=n_boot, seed=seed)
  dpo = ev.summarize(dpo_dialogues, n_boot=n_boot, seed=seed)
  extra: dict[str, Any] = {"reward": REWARD_NAME[task], "paper_reference": PAPER_REFERENCE[task],
                           "unparsed": unparsed_stats(sft_dialogues, dpo_dialogues)}
  try:
    a, b, ids = ev.paired_rewards(sft_dialogues, dpo_dialogues)
    p = ev.paired_test(a, b, seed=seed, alternative="two-sided")
    extra.update(p_value_test=P_VALUE_TEST, n_paired_conditions=len(ids),
                 p_value_one_sided=ev.paired_test(a, b, seed=seed, alternative="greater"),
                 p_value_one_sided_test="same test, one-sided, H1: DPO > SFT")
  except ValueError:
    a, b = ev.rewards(sft_dialogues), ev.rewards(dpo_dialogues)
    p = _unpaired_test(a, b, seed=seed)
    extra.update(p_value_test=UNPAIRED_TEST, n_paired_conditions=0)
  if task == "es":
    sa, sb = ev.paired_samples(sft_dialogues, dpo_dialogues)
    if sa.size and np.all(np.isin(sa, (0.0, 1.0))) and np.all(np.isin(sb, (0.0, 1.0))):
      extra["mcnemar_p"] = ev.mcnemar_exact(sa, sb, alternative="two-sided")
      extra["mcnemar_test"] = "exact McNemar, two-sided, dialogue-level pairs (same condition and seed)"
  extra["simulator"] = {"sft": simulator_behaviour(task, sft_dialogues), "dpo": simulator_behaviour(task, dpo_dialogues)}
  if ev.has_sampled_readout(sft_dialogues) and ev.has_sampled_readout(dpo_dialogues):
    extra["sampled_readout"] = sampled_readout(sft_dialogues, dpo_dialogues, seed=seed, n_boot=n_boot)
  if search_stats:
    extra["search"] = _search_summary(search_stats)
  report = {"task": task, "sft": sft, "dpo": dpo, "pairs": int(pairs_count), "p_value": float(p),
            "wall_seconds": {str(k): float(v) for k, v in wall_seconds.items()}, "extra": extra}
  validate_report(report)
  return report


# ----------------------------------------------------------------------------- validation
def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_num(x) -> bool:
  return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
          and math.isfinite(float(x)))


def _check_model(block: Any, key: str) -> None:
  if not isinstance(block, Mapping):
    raise ValueError(f"report: '{key}' must be an object {MODEL_KEYS}, got {type(block).__name__}")
  for k in MODEL_KEYS:
    if k not in block:
      raise ValueError(f"report: missing key '{key}.{k}'")
  unknown = sorted(set(block) - set(MODEL_KEYS))
  if unknown:
    raise ValueError(f"report: unknown key '{key}.{unknown[0]}' (allowed: {MODEL_KEYS})")
  if not _is_int(block["n"]) or block["n"] < 0:
    raise ValueError(f"report: '{key}.n' must be a non-negative int, got {block['n']!r}")
  for k in ("reward_mean", "mean_turns"):
    if not _is_num(block[k]):
      raise ValueError(f"report: '{key}.{k}' must be a finite number, got {block[k]!r}")
  ci = block["ci95"]
  if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(_is_num(v) for v in ci):
    raise ValueError(f"report: '{key}.ci95' must be [lo, hi] (two finite numbers), got {ci!r}")
  if ci[0] > ci[1]:
    raise ValueError(f"report: '{key}.ci95' has lo > hi: {ci!r}")


def validate_report(report: Any) -> None:
  """Raises ValueError naming the offending key if `report` does not follow the report.json schema."""
  if not isinstance(report, Mapping):
    raise ValueError(f"report: must be an object, got {type(report).__name__}")
  for k in REPORT_KEYS:
    if k not in report:
      raise ValueError(f"report: missing key '{k}'")
  unknown = sorted(set(report) - set(REPORT_KEYS) - set(OPTIONAL_KEYS))
  if unknown:
    raise ValueError(f"report: unknown key '{unknown[0]}' (allowed: {REPORT_KEYS + OPTIONAL_KEYS}; "
                     "put additions under 'extra')")
  if report["task"] not in TASKS:
    raise ValueError(f"report: 'task' must be one of {TASKS}, got {report['task']!r}")
  _check_model(report["sft"], "sft")
  _check_model(report["dpo"], "dpo")
  if not _is_int(report["pairs"]) or report["pairs"] < 0:
    raise ValueError(f"report: 'pairs' must be a non-negative int, got {report['pairs']!r}")
  p = report["p_value"]
  if not _is_num(p) or not 0.0 <= float(p) <= 1.0:
    raise ValueError(f"report: 'p_value' must be a number in [0, 1], got {p!r}")
  ws = report["wall_seconds"]
  if not isinstance(ws, Mapping):
    raise ValueError(f"report: 'wall_seconds' must be an object {{stage: seconds}}, got {type(ws).__name__}")
  for k, v in ws.items():
    if not isinstance(k, str):
      raise ValueError(f"report: 'wall_seconds' key {k!r} must be a string")
    if not _is_num(v) or v < 0:
      raise ValueError(f"report: 'wall_seconds.{k}' must be a non-negative number, got {v!r}")
  if "extra" in report and not isinstance(report["extra"], Mapping):
    raise ValueError(f"report: 'extra' must be an object, got {type(report['extra']).__name__}")


def load_report(path: str) -> dict:
  """Reads and validates a report.json."""
  with open(path, encoding="utf-8") as f:
    try:
      report = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e})") from None
  try:
    validate_report(report)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return report


# ----------------------------------------------------------------------------- writing
def _fmt(task: str, x: float) -> str:
  return f"{100 * x:.2f}%" if task == "es" else f"${x:.2f}"


def render_markdown(report: Mapping) -> str:
  """report.md: SFT vs DPO table, p-value, pairs, stage timings and the paper's figures."""
  task = report["task"]
  extra = report.get("extra", {}) or {}
  ref = PAPER_REFERENCE[task]
  lines = [f"# engage_jax report — {task.upper()}", "",
           f"Reward: **{REWARD_NAME[task]}** on simulated conversations with held-out conditions.", "",
           "| model | n | reward | 95% CI | mean turns |", "|---|---:|---:|---|---:|"]
  for name in ("sft", "dpo"):
    m = report[name]
    lo, hi = m["ci95"]
    lines.append(f"| {name.upper()} | {m['n']} | {_fmt(task, m['reward_mean'])} | "
                 f"[{_fmt(task, lo)}, {_fmt(task, hi)}] | {m['mean_turns']:.2f} |")
  delta = report["dpo"]["reward_mean"] - report["sft"]["reward_mean"]
  lines += ["", f"- DPO − SFT: **{'+' if delta >= 0 else '−'}{_fmt(task, abs(delta))}**",
            f"- p-value: **{report['p_value']:.4g}** ({extra.get('p_value_test', P_VALUE_TEST)})"]
  if "p_value_one_sided" in extra:
    lines.append(f"- one-sided p (H1: DPO > SFT): {extra['p_value_one_sided']:.4g}")
  if "mcnemar_p" in extra:
    lines.append(f"- exact McNemar p (dialogue pairs): {extra['mcnemar_p']:.4g}")
  if task == "p4g" and "unparsed" in extra:
    u = extra["unparsed"]
    lines.append("- unparsed outcomes (no donation stated; left out, not $0): " + ", ".join(
        f"{n.upper()} {u[n]['count']}/{u[n]['total']} ({100 * u[n]['rate']:.1f}%)" for n in ("sft", "dpo")))
  if "sampled_readout" in extra:
    sr = extra["sampled_readout"]
    lines.append("- reward above: the expected readout (the simulator's mean over its canonical answers); "
                 "sampled, parsed outcome (the paper's metric): " + ", ".join(
                     f"{n.upper()} {_fmt(task, sr[n]['reward_mean'])} [{_fmt(task, sr[n]['ci95'][0])}, "
                     f"{_fmt(task, sr[n]['ci95'][1])}]" for n in ("sft", "dpo")) + f", p = {sr['p_value']:.4g}")
  if "heldout_simulator" in extra:
    hs = extra["heldout_simulator"]
    lines.append("- against the held-out simulator (never queried by the search): " + ", ".join(
        f"{n.upper()} {_fmt(task, hs[n]['reward_mean'])} [{_fmt(task, hs[n]['ci95'][0])}, "
        f"{_fmt(task, hs[n]['ci95'][1])}]" for n in ("sft", "dpo")) + f", p = {hs['p_value']:.4g}")
  if report.get("oracle"):  # sandbox: the world itself as the user (exact expectation of the strategies played)
    lines += ["", "| agent (sandbox oracle) | n | oracle reward | exact expectation | 95% CI |", "|---|---:|---:|---:|---|"]
    for name, block in report["oracle"].items():
      lo, hi = block["expected_ci95"]
      lines.append(f"| {name} | {block['n']} | {_fmt(task, block['reward_mean'])} | "
                   f"{_fmt(task, block['expected_mean'])} | [{_fmt(task, lo)}, {_fmt(task, hi)}] |")
    lines.append("")
  if extra.get("rounds"):
    lines += ["", "| search → DPO round | pairs | reward | 95% CI | p vs SFT | p vs previous round |",
              "|---:|---:|---:|---|---:|---:|"]
    for row in extra["rounds"]:
      prev = "–" if row["p_vs_previous"] is None else f"{row['p_vs_previous']:.3g}"
      lines.append(f"| {row['round']} | {row['pairs']} | {_fmt(task, row['reward_mean'])} | "
                   f"[{_fmt(task, row['ci95'][0])}, {_fmt(task, row['ci95'][1])}] | {row['p_vs_sft']:.3g} | {prev} |")
    lines.append("")
  if "search_outcomes" in extra and extra["search_outcomes"].get("children"):
    so = extra["search_outcomes"]
    lines.append(f"- search: {so.get('unparsed', 0)} of {so['children']} tree nodes had an unparsed outcome "
                 f"({100 * so.get('unparsed_rate', 0):.1f}%; not backed up, not $0)")
    if "tree_variance_share" in so:
      lines.append(f"- search: {100 * so['tree_variance_share']:.0f}% of trees had reward variance "
                   f"({so['trees_with_variance']} trees; no variance, no pairs)")
  lines += [f"- preference pairs used for DPO: **{report['pairs']}**",
            f"- paper (arXiv 2506.21497), for context: {ref['text']} (SFT → DPO)", ""]
  if extra.get("simulator"):
    keys = [k for k in extra["simulator"]["sft"] if k != "n"]
    lines += ["## What the simulated user did", "", "| model | " + " | ".join(keys) + " |",
              "|---|" + "---:|" * len(keys)]
    for name in ("sft", "dpo"):
      row = extra["simulator"][name]
      lines.append(f"| {name.upper()} | " + " | ".join(f"{row.get(k, 0):.3g}" for k in keys) + " |")
    lines.append("")
  ws = report["wall_seconds"]
  if ws:
    lines += ["## Stage wall time", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in ws.items()]
    lines += [f"| total | {sum(ws.values()):.1f} |", ""]
  if extra.get("search"):
    lines += ["## Search", "", "| statistic | value |", "|---|---:|"]
    for k, v in extra["search"].items():
      lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines.append("")
  lines += ["Plots: `reward.png` (reward with 95% CI), `turns.png` (conversation length), "
            "`search.png` (pair margins and depths, when search statistics are available).", ""]
  return "\n".join(lines)


def _plots(workdir: str, report: Mapping, sft_dialogues, dpo_dialogues, search_stats) -> list[str]:
  import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib (plots only))
  matplotlib.use("Agg", force=True)
  from matplotlib import pyplot as plt  # noqa: PLC0415 (optional dependency: matplotlib)

  task, written = report["task"], []
  colors = {"sft": "#7f8c8d", "dpo": "#2e86de"}

  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  names = ["sft", "dpo"]
  means = [report[n]["reward_mean"] for n in names]
  err = np.array([[m - report[n]["ci95"][0], report[n]["ci95"][1] - m] for n, m in zip(names, means)]).T
  ax.bar([n.upper() for n in names], means, yerr=np.maximum(err, 0), capsize=8,
         color=[colors[n] for n in names])
  ref = PAPER_REFERENCE[task]
  for i, n in enumerate(names):
    ax.hlines(ref[n], i - 0.4, i + 0.4, colors="k", linestyles="dashed", linewidth=1,
              label="paper" if i == 0 else None)
  ax.set_ylabel(REWARD_NAME[task])
  ax.set_title(f"{task.upper()}: reward (95% CI), p={report['p_value']:.3g}")
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, "reward.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  written.append(path)

  if sft_dialogues or dpo_dialogues:
    turns = {n: [ev._turns(d) for d in (ds or [])] for n, ds in (("sft", sft_dialogues), ("dpo", dpo_dialogues))}
    top = max([max(v) for v in turns.values() if v] + [1])
    bins = np.arange(0, top + 2) - 0.5
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for n, v in turns.items():
      if v:
        ax.hist(v, bins=bins, alpha=0.6, label=f"{n.upper()} (mean {np.mean(v):.2f})", color=colors[n])
    ax.set_xlabel("agent turns")
    ax.set_ylabel("conversations")
    ax.set_title("Conversation length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "turns.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

  if search_stats and (search_stats.get("margins") or search_stats.get("depths")):
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    margins = list(search_stats.get("margins") or [])
    depths = list(search_stats.get("depths") or [])
    if margins:
      axes[0].hist(margins, bins=20, color=colors["dpo"])
    axes[0].set_xlabel("value margin (chosen − rejected)")
    axes[0].set_ylabel("pairs")
    axes[0].set_title("Pair value margins")
    if depths:
      axes[1].hist(depths, bins=np.arange(0, max(depths) + 2) - 0.5, color=colors["sft"])
    axes[1].set_xlabel("depth of the choice")
    axes[1].set_title("Pair depths")
    fig.tight_layout()
    path = os.path.join(workdir, "search.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written


def write_report(workdir: str, report: Mapping, *, sft_dialogues: Sequence[Dialogue] | None = None,
                 dpo_dialogues: Sequence[Dialogue] | None = None, search_stats: Mapping | None = None,
                 plots: bool = True) -> dict[str, str]:
  """Validates and writes DIR/report.json (atomically), report.md and the PNG plots.

  Returns {name: path} of what was written ("report.json", "report.md", "reward.png",
  "turns.png" when dialogues are given, "search.png" when search_stats has margins/depths).
  """
  validate_report(report)
  return multihost.main_write(_write_report, workdir, report, sft_dialogues, dpo_dialogues, search_stats,
                              plots, what=os.path.join(workdir, "report.json")) or {}


def _write_report(workdir, report, sft_dialogues, dpo_dialogues, search_stats, plots) -> dict[str, str]:
  os.makedirs(workdir, exist_ok=True)
  out = {}
  path = os.path.join(workdir, "report.json")
  atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
  out["report.json"] = path
  path = os.path.join(workdir, "report.md")
  atomic_write_text(path, render_markdown(report))
  out["report.md"] = path
  if plots:
    for p in _plots(workdir, report, sft_dialogues, dpo_dialogues, search_stats):
      out[os.path.basename(p)] = p
  return out


__all__ = ["MODEL_KEYS", "P_VALUE_TEST", "PAPER_REFERENCE", "REPORT_KEYS", "build_report", "load_report",
           "render_markdown", "search_stats_from_pairs", "unparsed_stats", "validate_report", "write_report"]
