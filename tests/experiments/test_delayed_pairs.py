"""Pair statistics and the results files of the delayed-effect grids (experiments/delayed.py)."""
from __future__ import annotations

import json

import pytest

from engage_jax.data import chat, sandbox
from engage_jax.data.dialogue import AGENT, USER, Turn
from engage_jax.experiments import delayed, runner

A, R, RE, S = sandbox.ES_STRATEGIES
LOG, EMO, CRED, _ = sandbox.P4G_STRATEGIES
SAD = {"emotion_type": "sadness", "problem_type": "job crisis", "situation": "i feel sad about my job ."}


def _es_pair(prior, chosen, rejected):
  turns = sandbox.opening_turns("es", SAD)
  for s in prior:
    turns += [Turn(AGENT, sandbox.ES_TEMPLATES[s][0]), Turn(USER, "it is still hard for me .")]
  return {"prompt": chat.agent_messages("es", turns),
          "chosen": [{"role": "assistant", "content": sandbox.ES_TEMPLATES[chosen][1]}],
          "rejected": [{"role": "assistant", "content": sandbox.ES_TEMPLATES[rejected][2]}],
          "meta": {"depth": len(prior)}}


def test_pair_immediate_and_disagreement():
  assert delayed.pair_immediate("es", _es_pair([], R, A)) == (0.0, 1.0)          # the future over the warm reply
  assert delayed.pair_immediate("es", _es_pair([R, R], S, A)) == pytest.approx((0.9, 0.1))   # last turn: outcome
  turns = sandbox.opening_turns("p4g", {"motivation": "trust"})
  p4g = {"prompt": chat.agent_messages("p4g", turns),
         "chosen": [{"role": "assistant", "content": sandbox.P4G_TEMPLATES[CRED][0]}],
         "rejected": [{"role": "assistant", "content": sandbox.P4G_TEMPLATES[EMO][0]}], "meta": {"depth": 0}}
  assert delayed.pair_immediate("p4g", p4g) == pytest.approx((0.0, sandbox.P4G_PLEDGE_MEAN))
  pairs = [_es_pair([], R, A), _es_pair([], S, RE), _es_pair([R, R], S, A), _es_pair([R], R, A)]
  d = delayed.disagreement("es", pairs)
  assert (d["n_pairs"], d["chosen_lower_immediate"], d["chosen_higher_immediate"], d["equal_immediate"]) == (4, 2, 1, 1)
  assert d["share_chosen_lower"] == 0.5
  assert d["by_depth"]["0"]["chosen_lower_immediate"] == 1 and d["by_depth"]["2"]["chosen_higher_immediate"] == 1
  assert d["chosen_strategies"] == {R: 2, S: 2} and d["rejected_strategies"][A] == 3


def test_write_results(tmp_path):
  exp = tmp_path / "exp"
  row = lambda o, p=None: {"seeds": [0], "reward_mean": o, "ci95": [o - 0.1, o + 0.1], "mean_turns": 3.0,
                           "oracle_mean": o, "oracle_expected": o, "oracle_expected_ci95": [o - 0.1, o + 0.1],
                           "oracle_first_turn_helpful": 0.5, "oracle_p_vs_future": p}
  summary = {"variants": {"sft": row(0.2, 0.01), "future": row(0.7), "turn": row(0.12, 0.001)}, "seeds": [0],
             "wall_seconds": {"this_run": 1.0, "steps_total": 2.0}, "sizes": {}}
  (exp / "seed-0" / "future" / "pairs").mkdir(parents=True)
  (exp / "experiment.json").write_text(json.dumps(summary))
  with open(exp / "seed-0" / "future" / "pairs" / "shard-00000.jsonl", "w") as f:
    for p in (_es_pair([], R, A), _es_pair([R, R], S, A)):
      f.write(json.dumps(p) + "\n")
  out = delayed.write_results(str(exp), "es", str(tmp_path / "res" / "sandbox_delayed_es"),
                              {"commands": ["python x"], "notes": ["n"]})
  t = out["targets"]
  assert t["future_minus_turn"] == pytest.approx(0.58) and t["p_future_vs_turn"] == 0.001
  assert t["future_beats_turn_p05"] and not t["future_within_15pct_of_optimum"]   # 0.7 < 0.85 * 0.9
  assert out["pair_stats"]["future"]["0"]["share_chosen_lower"] == 0.5 and "turn" not in out["pair_stats"]
  saved = json.loads((tmp_path / "res" / "sandbox_delayed_es.json").read_text())
  assert saved["commands"] == ["python x"] and saved["world"]["optimum"] == pytest.approx(0.9)
  md = (tmp_path / "res" / "sandbox_delayed_es.md").read_text()
  assert "NOT met" in md and "| future | 0 | 2 | 1 | 1 | 0 | 0.500 |" in md
  assert (tmp_path / "res" / "sandbox_delayed_es.png").stat().st_size > 1000


def test_plots_take_a_ci_a_rounding_error_off_its_mean(tmp_path):
  """The turn agent of the delayed ES grid plays one plan everywhere: units all 0.1, mean 0.0999..."""
  x = sum([0.1] * 96) / 96
  assert x < 0.1
  row = {"seeds": [0], "reward_mean": x, "ci95": [0.1, 0.1], "mean_turns": 3.0, "oracle_expected": x,
         "oracle_expected_ci95": [0.1, 0.1]}
  summary = {"variants": {"turn": row, "sft": dict(row, reward_mean=0.2, ci95=[0.1, 0.3])}}
  runner.plot(summary, tmp_path / "a.png", "es")
  delayed.plot(summary, sandbox.world_table("es"), tmp_path / "b.png", "es")
  assert (tmp_path / "a.png").exists() and (tmp_path / "b.png").exists()
