"""Iterated search → DPO rounds on the delayed-effect sandbox worlds: future vs turn reward by round.

One pipeline workdir per (task, seed, horizon) under ROOT, named `<task>-s<seed>-<horizon>`
(horizon "future" | "turn", config.search.reward_horizon), each run with config.search_dpo_rounds
= R, the same seed's SFT stages in both, and the sandbox oracle's chats kept in `oracle/<agent>.jsonl`
(agent "sft", "round-1" .. "round-<R-1>", "dpo" = round R). `summarize` gives, per horizon and
round, the exact expected reward of the strategies the agent played (the oracle's "expected")
averaged per (seed, condition) unit: mean, 95% bootstrap CI, share of the world's long-run
optimum, paired sign-flip p of future vs turn on the same units, the pairs the round's search gave
and the share of them whose chosen turn has the lower immediate reward (`delayed.disagreement`).

  python -m engage_jax.experiments.delayed_rounds --root=ROOT --task=es --seeds=0,1,2 \\
      --out=docs/results/sandbox_delayed_rounds_es --extra=notes.json
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engage_jax import evaluate
from engage_jax.data import sandbox
from engage_jax.experiments import delayed, runner
from engage_jax.fileio import atomic_write_json, atomic_write_text

HORIZONS = ("future", "turn")


def agent_names(rounds: int) -> list[str]:
  return ["sft"] + [f"round-{r}" for r in range(1, rounds)] + ["dpo"]


def unit_values(workdir: Path, agent: str, seed: int) -> dict[tuple[int, str], float]:
  """{(seed, condition id): mean exact expectation over the condition's samples} of one agent."""
  groups: dict = defaultdict(list)
  for d in evaluate.load_dialogues(str(workdir / "oracle" / f"{agent}.jsonl")):
    groups[(seed, str(d.outcome["condition_id"]))].append(float(d.outcome["expected"]))
  return {k: float(np.mean(v)) for k, v in groups.items()}


def round_pairs(workdir: Path, r: int) -> list[dict]:
  d = workdir / "pairs" if r == 1 else workdir / "rounds" / f"round-{r}" / "pairs"
  return runner.read_pairs(runner.shard_files(d))


def summarize(root: str | Path, task: str, seeds: Sequence[int], rounds: int) -> dict:
  root = Path(root)
  table = sandbox.world_table(task, delayed.WORLD)
  agents = agent_names(rounds)
  vals = {h: {a: {} for a in agents} for h in HORIZONS}
  pairs = {h: {r: [] for r in range(1, rounds + 1)} for h in HORIZONS}
  for h in HORIZONS:
    for s in seeds:
      wd = root / f"{task}-s{s}-{h}"
      for a in agents:
        vals[h][a].update(unit_values(wd, a, s))
      for r in range(1, rounds + 1):
        pairs[h][r] += round_pairs(wd, r)
  out = {"task": task, "seeds": list(seeds), "rounds": rounds, "world": table, "by_round": []}
  units = sorted(vals["future"]["sft"])
  for i, a in enumerate(agents):
    row = {"agent": a, "round": i}
    for h in HORIZONS:
      x = np.array([vals[h][a][u] for u in units])
      row[h] = {"mean": float(x.mean()), "ci95": list(evaluate.bootstrap_ci(x)), "n_units": int(x.size),
                "share_of_optimum": float(x.mean() / table["optimum"])}
      if i > 0:
        st = delayed.disagreement(task, pairs[h][i])
        row[h].update(pairs=st["n_pairs"], share_chosen_lower=st["share_chosen_lower"])
    f = np.array([vals["future"][a][u] for u in units])
    t = np.array([vals["turn"][a][u] for u in units])
    row["p_future_vs_turn"] = evaluate.paired_test(t, f) if i > 0 else None
    out["by_round"].append(row)
  last = out["by_round"][-1]
  out["targets"] = {"future": last["future"]["mean"], "turn": last["turn"]["mean"],
                    "p_future_vs_turn": last["p_future_vs_turn"],
                    "future_beats_turn_p05": bool(last["future"]["mean"] > last["turn"]["mean"]
                                                  and last["p_future_vs_turn"] < 0.05),
                    "future_share_of_optimum": last["future"]["share_of_optimum"],
                    "future_within_15pct_of_optimum": bool(last["future"]["share_of_optimum"] >= 0.85),
                    "turn_share_of_greedy": last["turn"]["mean"] / table["greedy"]}
  return out


def render(s: Mapping) -> str:
  task, t = s["task"], s["world"]
  fmt = (lambda x: f"{x:.3f}") if task == "es" else (lambda x: f"${x:.3f}")
  lines = [f"# Delayed-effect {task} world: future vs turn reward over {s['rounds']} search → DPO rounds", "",
           f"World: long-run optimum {fmt(t['optimum'])}, greedy turn-level {fmt(t['greedy'])}, uniform agent "
           f"{fmt(t['uniform'])}. Values: the exact expected reward of the strategies each agent played "
           f"against the world (engage_jax/oracle.py), per (seed, condition) unit; seeds {s['seeds']}.", "",
           "Agent dpo = the last round's DPO agent.", "",
           "| agent | future | 95% CI | of optimum | pairs | chosen lower | turn | 95% CI | pairs | p future vs turn |",
           "|---|---:|---|---:|---:|---:|---:|---|---:|---:|"]
  for row in s["by_round"]:
    f, u = row["future"], row["turn"]
    cl, p = f.get("share_chosen_lower"), row["p_future_vs_turn"]
    lines.append(f"| {row['agent']} | {fmt(f['mean'])} | [{fmt(f['ci95'][0])}, {fmt(f['ci95'][1])}] | "
                 f"{100 * f['share_of_optimum']:.0f}% | {f.get('pairs', '–')} | "
                 f"{'–' if cl is None else f'{cl:.2f}'} | {fmt(u['mean'])} | [{fmt(u['ci95'][0])}, "
                 f"{fmt(u['ci95'][1])}] | {u.get('pairs', '–')} | "
                 f"{'–' if p is None else f'{p:.3g}'} |")
  tg = s["targets"]
  lines += ["", f"- last round: future {fmt(tg['future'])} vs turn {fmt(tg['turn'])}, paired p "
            f"{tg['p_future_vs_turn']:.3g} (future > turn, p < 0.05: {'met' if tg['future_beats_turn_p05'] else 'NOT met'})",
            f"- future at {100 * tg['future_share_of_optimum']:.0f}% of the optimum (>= 85%: "
            f"{'met' if tg['future_within_15pct_of_optimum'] else 'NOT met'}); turn at "
            f"{100 * tg['turn_share_of_greedy']:.0f}% of the greedy turn-level value", ""]
  lines += [f"- {n}" for n in s.get("notes", [])] + ["", "Commands:", ""] + [f"    {c}" for c in s.get("commands", [])] + [""]
  return "\n".join(lines)


def plot(s: Mapping, path: Path) -> None:
  import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib (plots only))
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency: matplotlib)
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  x = [row["round"] for row in s["by_round"]]
  for h, color in zip(HORIZONS, ("tab:blue", "tab:orange"), strict=True):
    m = [row[h]["mean"] for row in s["by_round"]]
    lo = [row[h]["ci95"][0] for row in s["by_round"]]
    hi = [row[h]["ci95"][1] for row in s["by_round"]]
    ax.plot(x, m, "o-", color=color, label=f"{h} reward")
    ax.fill_between(x, lo, hi, color=color, alpha=0.2)
  t = s["world"]
  for key, style in (("optimum", "-"), ("greedy", "--"), ("uniform", ":")):
    ax.axhline(t[key], color="k", linestyle=style, linewidth=0.8, label=f"{key} {t[key]:.3g}")
  ax.set_xticks(x, [f"round-{s['rounds']}" if row["agent"] == "dpo" else row["agent"] for row in s["by_round"]])
  ax.set_xlabel("search → DPO round (0: SFT)")
  ax.set_ylabel("exact expected reward")
  ax.legend(fontsize=7)
  ax.set_title(f"delayed {s['task']} world, {len(s['seeds'])} seeds", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(root: str, task: str, seeds: Sequence[int], rounds: int, out_prefix: str, extra: Mapping | None = None) -> dict:
  s = summarize(root, task, seeds, rounds)
  s.update(commands=list((extra or {}).get("commands", [])), notes=list((extra or {}).get("notes", [])))
  out = Path(out_prefix)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_json(out.with_suffix(".json"), s)
  atomic_write_text(out.with_suffix(".md"), render(s))
  plot(s, out.with_suffix(".png"))
  return s


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", required=True)
  ap.add_argument("--task", required=True, choices=("es", "p4g"))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", required=True)
  ap.add_argument("--extra", default="")
  a = ap.parse_args(argv)
  extra = json.loads(Path(a.extra).read_text()) if a.extra else {}
  s = write(a.root, a.task, [int(x) for x in a.seeds.split(",")], a.rounds, a.out, extra)
  print(json.dumps(s["targets"], indent=1))


if __name__ == "__main__":
  main()
