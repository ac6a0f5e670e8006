"""Simulator ensembles: every agent against every simulator, on the same conditions and seeds.

`evaluate_grid(agents, simulators, conditions, settings, seed, simulate_fn)` runs
`evaluate.evaluate` for each (agent, simulator) with ONE seed, so every cell sees the same
condition ids, opening turns and per-call seeds: the comparison is paired by (condition, sample).
`gains(cells, baseline, search_sim)` compares each agent with the baseline agent simulator by
simulator, condition by condition (`evaluate.paired_rewards`), and pools the held-out simulators
(all but `search_sim`) into one paired test over (simulator, condition) units.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from engage_jax import evaluate
from engage_jax.data.dialogue import Dialogue


def evaluate_grid(agents: Mapping[str, Any], simulators: Mapping[str, Any], conditions: Sequence[Dialogue],
                  settings: Any, seed: int, simulate_fn: Callable | None = None
                  ) -> dict[tuple[str, str], list[Dialogue]]:
  """{(agent name, simulator name): dialogues [C * S]}; simulators must be non-empty."""
  if not simulators:
    raise ValueError("ensemble.evaluate_grid: a simulator ensemble of size 0")
  out = {}
  for a, agent in agents.items():
    for s, sim in simulators.items():
      _, dialogues = evaluate.evaluate(agent, sim, conditions, settings, seed, simulate_fn=simulate_fn, n_boot=2000)
      out[(a, s)] = dialogues
  return out


def gains(cells: Mapping[tuple[str, str], Sequence[Dialogue]], baseline: str, search_sim: str) -> dict:
  """{agent: {"by_sim": {sim: {"reward_mean", "gain", "p"}}, "heldout_gain", "heldout_p",
  "heldout_units"}} against `baseline` (paired by condition id within each simulator)."""
  agents = sorted({a for a, _ in cells})
  sims = sorted({s for _, s in cells})
  out = {}
  for a in agents:
    by_sim, held_a, held_b = {}, [], []
    for s in sims:
      if (a, s) not in cells or (baseline, s) not in cells:
        continue
      base, mine, _ = evaluate.paired_rewards(cells[(baseline, s)], cells[(a, s)])
      by_sim[s] = {"reward_mean": float(evaluate.rewards(cells[(a, s)]).mean()),
                   "gain": float(np.mean(mine - base)),
                   "p": evaluate.paired_test(base, mine) if a != baseline else 1.0}
      if s != search_sim:
        held_a.append(mine)
        held_b.append(base)
    entry: dict = {"by_sim": by_sim}
    if held_a:
      mine, base = np.concatenate(held_a), np.concatenate(held_b)
      entry.update(heldout_gain=float(np.mean(mine - base)), heldout_units=int(mine.size),
                   heldout_p=evaluate.paired_test(base, mine) if a != baseline else 1.0)
    out[a] = entry
  return out
