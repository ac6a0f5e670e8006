"""The delayed-effect sandbox grids (issue 28): what the search's pairs say, and the results files.

- `pair_immediate(task, pair)`: the world's expected immediate reward (`sandbox.immediate_reward`:
  what the turn reward gives the user's next reply) of a pair's chosen and rejected turn, from the
  strategies of the prompt's agent turns and of the two candidates.
- `disagreement(task, pairs)`: {"n_pairs", "chosen_lower_immediate", "chosen_higher_immediate",
  "equal_immediate", "share_chosen_lower", "by_depth", "chosen_strategies", "rejected_strategies"}:
  share_chosen_lower = pairs whose chosen turn has the LOWER immediate reward (the search preferred
  the future over the next reply: where future and turn rewards disagree).
- `write_results(exp_dir, task, out_prefix, extra)`: docs/results/sandbox_delayed_<task>.{json,md,png}
  from the experiment directory: experiment.json + `commands`, `notes` (from `extra`), the world's
  optima (`sandbox.world_table`), the pair statistics of every search (per variant and seed), and
  the issue's targets computed from the table ("targets").

  python -m engage_jax.experiments.delayed --exp=DIR --task=es --out=docs/results/sandbox_delayed_es \
      --extra=notes.json
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from engage_jax.data import sandbox
from engage_jax.experiments import runner

WORLD = "delayed"


def _strategy(text: str, task: str) -> str:
  return sandbox.strategy_of(text, task) or "<unmatched>"


def pair_immediate(task: str, pair: Mapping) -> tuple[float, float]:
  """(chosen, rejected) expected immediate reward of a search pair in the delayed world."""
  prior = [_strategy(m["content"], task) for m in pair["prompt"]
           if m["role"] == "assistant" and m["content"].strip() != sandbox.P4G_GREETING]
  meta = pair.get("meta", {})
  chosen = meta.get("chosen_strategy") or _strategy(pair["chosen"][0]["content"], task)
  rejected = meta.get("rejected_strategy") or _strategy(pair["rejected"][0]["content"], task)
  return (sandbox.immediate_reward(task, prior + [chosen]), sandbox.immediate_reward(task, prior + [rejected]))


def _counts(pairs: Sequence[Mapping], task: str) -> dict:
  lower = higher = equal = 0
  for p in pairs:
    c, r = pair_immediate(task, p)
    lower += c < r
    higher += c > r
    equal += c == r
  n = len(pairs)
  return {"n_pairs": n, "chosen_lower_immediate": lower, "chosen_higher_immediate": higher,
          "equal_immediate": equal, "share_chosen_lower": lower / n if n else None}


def disagreement(task: str, pairs: Sequence[Mapping]) -> dict:
  """Immediate-reward comparison of chosen vs rejected over `pairs` (module doc)."""
  out = _counts(pairs, task)
  depths = sorted({int(p.get("meta", {}).get("depth", -1)) for p in pairs})
  out["by_depth"] = {str(d): _counts([p for p in pairs if int(p.get("meta", {}).get("depth", -1)) == d], task)
                     for d in depths}
  for side in ("chosen", "rejected"):
    out[f"{side}_strategies"] = dict(Counter(
        p.get("meta", {}).get(f"{side}_strategy") or _strategy(p[side][0]["content"], task) for p in pairs))
  return out


def search_pairs(exp_dir: Path, variant: str, seed: int) -> list[dict]:
  """The pairs of `variant`'s search for `seed` (future / turn), [] if it has none."""
  return runner.read_pairs(runner.shard_files(Path(exp_dir) / f"seed-{seed}" / variant / "pairs"))


def targets(summary: Mapping, table: Mapping) -> dict:
  """The issue's targets from the experiment table (oracle = exact expected reward)."""
  v = summary["variants"]
  if "future" not in v or "turn" not in v:
    return {}
  fut, turn = v["future"]["oracle_expected"], v["turn"]["oracle_expected"]
  return {"future_oracle": fut, "turn_oracle": turn, "future_minus_turn": fut - turn,
          "p_future_vs_turn": v["turn"].get("oracle_p_vs_future"),
          "future_share_of_optimum": fut / table["optimum"], "turn_share_of_optimum": turn / table["optimum"],
          "optimum": table["optimum"], "greedy": table["greedy"], "uniform": table["uniform"],
          "future_beats_turn_p05": bool(fut > turn and (v["turn"].get("oracle_p_vs_future") or 1.0) < 0.05),
          "future_within_15pct_of_optimum": bool(fut >= 0.85 * table["optimum"])}


def plot(summary: Mapping, table: Mapping, path: Path, task: str) -> None:
  """runner.plot's bars with the world's long-run optimum, greedy turn-level value and uniform agent."""
  import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib (plots only))
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency: matplotlib)
  names = list(summary["variants"])
  rows = [summary["variants"][n] for n in names]
  fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.8))
  x = list(range(len(names)))
  sim = [r["reward_mean"] for r in rows]
  ax.bar([i - 0.2 for i in x], sim, 0.4, label="learned simulator")
  if all(r.get("oracle_expected") is not None for r in rows):
    o = [r["oracle_expected"] for r in rows]
    err = [[max(0.0, a - r["oracle_expected_ci95"][0]) for a, r in zip(o, rows)],   # a CI [x, x] may sit
           [max(0.0, r["oracle_expected_ci95"][1] - a) for a, r in zip(o, rows)]]   # a rounding error off x
    ax.bar([i + 0.2 for i in x], o, 0.4, yerr=err, capsize=3, label="sandbox world (exact)")
  for key, style, label in (("optimum", "-", "long-run optimum"), ("greedy", "--", "greedy turn-level"),
                            ("uniform", ":", "uniform agent")):
    ax.axhline(table[key], color="k", linestyle=style, linewidth=0.8, label=f"{label} {table[key]:.3g}")
  ax.set_xticks(x, names)
  ax.set_ylabel("P(feel better)" if task == "es" else "mean donation ($)")
  ax.legend(fontsize=7, loc="upper right")
  ax.set_title(f"delayed {task} world: reward by variant (95% CI over seeds x conditions)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def render(summary: Mapping, task: str) -> str:
  """runner.render_markdown + the world's optima, the targets and the pair statistics."""
  t, tg = summary["world"], summary.get("targets", {})
  fmt = (lambda x: "–" if x is None else (f"{x:.3f}" if task == "es" else f"${x:.3f}"))
  lines = [runner.render_markdown(summary, task).replace(f"# Experiment ({task})", f"# Delayed-effect {task} world (issue 28)"), "",
           "## World (exact, engage_jax/data/sandbox.py world='delayed')", "",
           f"- long-run optimum {fmt(t['optimum'])}: {', '.join(' > '.join(p) for p in t['optimal_plans'][:3])}"
           + (" ..." if len(t["optimal_plans"]) > 3 else ""),
           f"- greedy turn-level policy {fmt(t['greedy'])}: {' > '.join(t['greedy_plan'])} (margin {fmt(t['margin'])})",
           f"- uniform corpus agent {fmt(t['uniform'])}", ""]
  if tg:
    pf = tg["p_future_vs_turn"]
    lines += ["## Targets (oracle = exact expected reward of the strategies played)", "",
              f"- future {fmt(tg['future_oracle'])} vs turn {fmt(tg['turn_oracle'])}: difference "
              f"{fmt(tg['future_minus_turn'])}, paired p = {'–' if pf is None else f'{pf:.3g}'} "
              f"(target: future > turn, p < 0.05: {'met' if tg['future_beats_turn_p05'] else 'NOT met'})",
              f"- future at {100 * tg['future_share_of_optimum']:.0f}% of the long-run optimum (target >= 85%: "
              f"{'met' if tg['future_within_15pct_of_optimum'] else 'NOT met'}); turn at "
              f"{100 * tg['turn_share_of_optimum']:.0f}% (greedy turn-level {fmt(tg['greedy'])})", ""]
  lines += ["## What the search saw: pairs whose chosen turn has the lower immediate reward", "",
            "| search | seed | pairs | chosen lower | chosen higher | equal | share chosen lower |",
            "|---|---|---|---|---|---|---|"]
  for v, per_seed in summary.get("pair_stats", {}).items():
    for s, st in per_seed.items():
      share = st["share_chosen_lower"]
      lines.append(f"| {v} | {s} | {st['n_pairs']} | {st['chosen_lower_immediate']} | "
                   f"{st['chosen_higher_immediate']} | {st['equal_immediate']} | "
                   f"{'–' if share is None else f'{share:.3f}'} |")
  lines += [""] + [f"- {n}" for n in summary.get("notes", [])] + [""]
  lines += ["Commands:", ""] + [f"    {c}" for c in summary.get("commands", [])] + [""]
  return "\n".join(lines)


def write_results(exp_dir: str, task: str, out_prefix: str, extra: Mapping | None = None) -> dict:
  """Writes <out_prefix>.json / .md / .png (module doc) and returns the summary."""
  exp = Path(exp_dir)
  summary = json.loads((exp / "experiment.json").read_text())
  extra = dict(extra or {})
  summary["commands"] = list(extra.get("commands", []))
  summary["notes"] = list(extra.get("notes", []))
  table = sandbox.world_table(task, WORLD)
  summary["world"] = table
  stats: dict = {}
  for v in ("future", "turn"):
    for s in summary.get("seeds", []):
      pairs = search_pairs(exp, v, int(s))
      if pairs:
        stats.setdefault(v, {})[str(s)] = disagreement(task, pairs)
    if stats.get(v):
      every = [p for s in summary.get("seeds", []) for p in search_pairs(exp, v, int(s))]
      stats[v]["all"] = disagreement(task, every)
  summary["pair_stats"] = stats
  summary["targets"] = targets(summary, table)
  out = Path(out_prefix)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
  out.with_suffix(".md").write_text(render(summary, task))
  plot(summary, table, out.with_suffix(".png"), task)
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--exp", required=True, help="the experiment directory (experiment.json, seed-S/)")
  ap.add_argument("--task", required=True, choices=("es", "p4g"))
  ap.add_argument("--out", required=True, help="output path without suffix")
  ap.add_argument("--extra", default="", help="JSON file with 'commands' and 'notes' lists")
  a = ap.parse_args(argv)
  extra = json.loads(Path(a.extra).read_text()) if a.extra else {}
  s = write_results(a.exp, a.task, a.out, extra)
  print(json.dumps(s["targets"], indent=1))


if __name__ == "__main__":
  main()
