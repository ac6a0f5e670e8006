from __future__ import annotations

import math

import pytest

from engage_jax import rewards
from engage_jax.data import Dialogue, sandbox

# Tolerances: the sandbox's probabilities are exact constants; sampled frequencies are checked within
# a few standard errors of a seeded Python/numpy sample (the same draws on every CPU).


def test_deterministic():
  for task in ("es", "p4g"):
    a = [d.to_json() for d in sandbox.generate(task, 50, 7)]
    assert a == [d.to_json() for d in sandbox.generate(task, 50, 7)]
    assert a != [d.to_json() for d in sandbox.generate(task, 50, 8)]
    assert all(Dialogue.from_json(x).to_json() == x for x in a)


def test_strategy_of():
  for table in (sandbox.ES_TEMPLATES, sandbox.P4G_TEMPLATES):
    for s, texts in table.items():
      for t in texts:
        assert sandbox.strategy_of(t) == s
        assert sandbox.strategy_of(t.upper() + "  ") == s
  assert sandbox.strategy_of("you will get through it , strong one") == "Affirmation and Reassurance"
  assert sandbox.strategy_of("qwerty") is None
  d = sandbox.generate("es", 30, 0)
  assert all(sandbox.strategy_of(t.text) == t.strategy for x in d for t in x.turns if t.role == "agent")


def test_es_dynamics():
  ds = sandbox.generate("es", 3000, 0)
  helped = [0, 0]  # [engaged, total] after a helpful agent turn
  other = [0, 0]
  for d in ds:
    best = sandbox.optimal_strategy("es", d.condition)
    assert d.turns[0].role == "user" and d.condition["emotion_type"] in sandbox.EMOTIONS
    assert d.num_agent_turns <= sandbox.ES_MAX_TURNS
    assert d.outcome["engaged"] == rewards.es_engaged([t.text for t in d.turns if t.role == "user"])
    for i, t in enumerate(d.turns):
      if t.role == "agent":
        engaged = rewards.es_engaged([d.turns[i + 1].text], last_n=1)
        acc = helped if t.strategy == best else other
        acc[0] += engaged
        acc[1] += 1
  p_h, p_o = helped[0] / helped[1], other[0] / other[1]
  # ~1400 helpful / ~5000 other turns: 4-5 standard errors of slack, far from the other value.
  assert abs(p_h - sandbox.P_HELP) < 0.06, p_h
  assert abs(p_o - sandbox.P_BASE) < 0.025, p_o
  rate = sum(d.outcome["engaged"] for d in ds) / len(ds)
  uniform = sandbox.expected_reward("es", {"emotion_type": "anxiety"}, ["Reflection of feelings"] * 3)
  assert abs(rate - 0.507) < 0.04 and uniform < 0.25
  assert sandbox.optimal_reward("es") == pytest.approx(1 - 0.4 ** 3)


def test_es_texts_short(sandbox_tok):
  from engage_jax.data import agent_messages, simulator_messages
  for d in sandbox.generate("es", 20, 1) + sandbox.generate("p4g", 20, 1):
    assert len(sandbox_tok.apply_chat(agent_messages(d.task, d.turns))) < 150
    assert len(sandbox_tok.apply_chat(simulator_messages(d.task, d.condition, d.turns))) < 150


def test_p4g_dynamics():
  ds = sandbox.generate("p4g", 3000, 0)
  by_k = {k: [] for k in range(4)}
  for d in ds:
    best = sandbox.optimal_strategy("p4g", d.condition)
    agents = [t for t in d.turns if t.role == "agent"]
    assert d.turns[0].role == "agent" and agents[0].strategy == sandbox.GREETING_STRATEGY
    assert len(agents) == 1 + sandbox.P4G_STRATEGY_TURNS
    k = sum(t.strategy == best for t in agents)
    assert k == d.outcome["num_effective"]
    assert d.outcome["donation"] in sandbox.DONATION_VALUES
    by_k[k].append(d.outcome["donation"])
    assert d.turns[1].text == sandbox.P4G_REVEAL[d.condition["motivation"]]
  means = {k: sum(v) / len(v) for k, v in by_k.items()}
  for k in (0, 1, 2):  # k=3 has only ~1.6% of rows; checked via p_optimal below
    sd = math.sqrt(0.6 / len(by_k[k]))
    assert abs(means[k] - sandbox.donation_mean(k)) < 5 * sd, (k, means[k])
  assert means[0] < means[1] < means[2]
  best = sandbox.generate("p4g", 400, 1, p_optimal=1.0)
  assert all(d.outcome["num_effective"] == 3 for d in best)
  m = sum(d.outcome["donation"] for d in best) / len(best)
  assert abs(m - sandbox.optimal_reward("p4g")) < 0.15 and sandbox.optimal_reward("p4g") > 1.5
  assert sandbox.donation_mean(0) < 0.35


def test_expected_reward_and_errors():
  cond = {"motivation": "trust"}
  assert sandbox.optimal_strategy("p4g", cond) == "Logical appeal"
  assert sandbox.expected_reward("p4g", cond, ["Greeting"] + ["Logical appeal"] * 3) == \
      pytest.approx(sandbox.donation_mean(3))
  assert sandbox.expected_reward("p4g", cond, ["Greeting"] + ["Credibility appeal"] * 3) == \
      pytest.approx(sandbox.donation_mean(0))
  assert sandbox.expected_reward("es", {"emotion_type": "fear"}, ["Affirmation and Reassurance"]) == \
      pytest.approx(0.6)
  assert sandbox.expected_reward("es", {"emotion_type": "fear"}, ["Providing Suggestions"]) == \
      pytest.approx(0.08)
  with pytest.raises(ValueError, match="motivation"):
    sandbox.optimal_strategy("p4g", {"motivation": "money"})
  with pytest.raises(ValueError, match="task"):
    sandbox.generate("chess", 1, 0)
  conds = sandbox.random_conditions("es", 5, 0)
  assert conds == sandbox.random_conditions("es", 5, 0)
  assert sandbox.opening_turns("es", conds[0])[0].role == "user"
