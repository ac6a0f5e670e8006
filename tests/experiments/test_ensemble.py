"""The ensemble evaluation is paired: same conditions and seeds for every (agent, simulator)."""
from __future__ import annotations

import pytest

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.experiments import ensemble

SCORE = {("sft", "sim-0"): 0.2, ("sft", "sim-1"): 0.1, ("dpo", "sim-0"): 0.7, ("dpo", "sim-1"): 0.4}


def _conds(n):
  c = {"emotion_type": "sadness", "problem_type": "job crisis", "situation": "s"}
  return [Dialogue(f"c{i}", "es", [Turn(USER, "hi")], dict(c)) for i in range(n)]


def test_grid_is_paired_and_gains_are_per_condition():
  calls = []

  def fake_simulate(agent, sim, starts, *, task, max_agent_turns, reward_cfg, seed):
    calls.append((agent, sim, seed, tuple(d.id for d in starts)))
    out = []
    for d in starts:
      i = int(d.id.split("/")[0][1:])
      r = 1.0 if (i % 10) < 10 * SCORE[(agent, sim)] else 0.0   # condition i engaged below the rate
      out.append(Dialogue(d.id, task, d.turns + [Turn(AGENT, "x")], d.condition,
                          {"reward": r, "num_turns": 1}))
    return out

  settings = {"task": "es", "max_agent_turns": 2, "samples_per_condition": 2}
  cells = ensemble.evaluate_grid({"sft": "sft", "dpo": "dpo"}, {"sim-0": "sim-0", "sim-1": "sim-1"},
                                 _conds(20), settings, seed=5, simulate_fn=fake_simulate)
  # every cell: the same (seed, start ids) sequence of calls
  seqs = {}
  for agent, sim, seed, ids in calls:
    seqs.setdefault((agent, sim), []).append((seed, ids))
  assert len({tuple(v) for v in seqs.values()}) == 1 and len(seqs) == 4
  g = ensemble.gains(cells, baseline="sft", search_sim="sim-0")
  assert g["dpo"]["by_sim"]["sim-0"]["gain"] == pytest.approx(0.5)
  assert g["dpo"]["by_sim"]["sim-1"]["gain"] == pytest.approx(0.3)
  assert g["dpo"]["heldout_gain"] == pytest.approx(0.3) and g["dpo"]["heldout_units"] == 20
  assert g["dpo"]["heldout_p"] == pytest.approx(2 / 2 ** 6, abs=0.005)  # 6 of 20 gain by 1, none lose
  assert g["sft"]["heldout_gain"] == 0.0


def test_empty_ensemble_is_an_error():
  with pytest.raises(ValueError, match="size 0"):
    ensemble.evaluate_grid({"a": 1}, {}, _conds(1), {"task": "es", "max_agent_turns": 1}, 0)
