"""Oracle scores against the sandbox's own probabilities, on hand-built and live chats."""
from __future__ import annotations

import numpy as np
import pytest

from engage_jax.data import sandbox
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax import oracle

# Tolerances: the oracle's expectations are exact float64 formulas (approx, relative 1e-6); the
# seeded Monte-Carlo checks allow 4 standard errors of their own sample (numpy RNG: the same draws
# on every CPU).

SAD = {"emotion_type": "sadness", "problem_type": "job crisis", "situation": "i feel sad about my job ."}
NUMBERS = {"motivation": "numbers", "age_group": "young", "hobby": "music"}
REFLECT = sandbox.ES_TEMPLATES["Reflection of feelings"][0]        # helpful for sadness
SUGGEST = sandbox.ES_TEMPLATES["Providing Suggestions"][1]          # never helpful
LOGICAL = sandbox.P4G_TEMPLATES["Logical appeal"][2]                # effective for numbers
STORY = sandbox.P4G_TEMPLATES["Personal story"][0]


def _es(agent_texts):
  turns = sandbox.opening_turns("es", SAD)
  for t in agent_texts:
    turns += [Turn(AGENT, t), Turn(USER, "it is still hard for me .")]
  return Dialogue("d", "es", turns, dict(SAD))


def test_transcript_scores_match_sandbox_probabilities():
  pb, ph = sandbox.P_BASE, sandbox.P_HELP
  s = oracle.transcript_score("es", _es([SUGGEST, REFLECT, "blah blah zzz ."]))
  assert s["expected"] == pytest.approx(1 - (1 - pb) * (1 - ph) * (1 - pb))
  assert s["first_helpful"] == 0.0 and s["unmatched"] == 1 and s["turns"] == 3
  s = oracle.transcript_score("es", _es([REFLECT]))
  assert s["expected"] == pytest.approx(ph) and s["first_helpful"] == 1.0
  # P4G: greeting skipped; k = 2 effective turns -> donation_mean(2) = 1.025
  turns = sandbox.opening_turns("p4g", NUMBERS)
  for t in (LOGICAL, STORY, LOGICAL):
    turns += [Turn(AGENT, t), Turn(USER, "ok .")]
  s = oracle.transcript_score("p4g", Dialogue("p", "p4g", turns, dict(NUMBERS)))
  assert s["expected"] == pytest.approx(1.025) and s["first_helpful"] == 1.0
  agg = oracle.transcript_scores("es", [_es([REFLECT]), _es([SUGGEST, SUGGEST])])
  assert agg["first_turn_helpful"] == 0.5
  assert agg["expected_mean"] == pytest.approx((ph + 1 - (1 - pb) ** 2) / 2)
  assert agg["unmatched_rate"] == 0.0


class FixedAgent:
  """Plays texts[t] at its t-th turn (counted from the chat's agent turns)."""

  def __init__(self, texts):
    self.texts = texts

  def generate(self, messages, seed):
    return [self.texts[min(sum(m["role"] == "assistant" for m in msgs) - (msgs[1]["role"] == "assistant"),
                           len(self.texts) - 1)] for msgs in messages]


def _starts(task, n):
  conds = [SAD if task == "es" else NUMBERS] * n
  return [Dialogue(f"c{i}", task, sandbox.opening_turns(task, c), dict(c)) for i, c in enumerate(conds)]


def test_live_world_es_expected_exact_and_sampled_rate():
  agent = FixedAgent([SUGGEST, REFLECT, REFLECT])
  rows = oracle.simulate_world(agent, _starts("es", 3000), "es", seed=0)
  want = 1 - (1 - sandbox.P_BASE) * (1 - sandbox.P_HELP) ** 2
  assert all(d.outcome["expected"] == pytest.approx(want) for d in rows)
  r = np.array([d.outcome["reward"] for d in rows])
  assert abs(r.mean() - want) < 4 * np.sqrt(want * (1 - want) / r.size)
  # an engaged chat ends at its engagement, with an engaged line; the others run to the goodbye
  for d in rows[:50]:
    if d.outcome["reward"]:
      assert d.turns[-1].text in sandbox.ES_ENGAGED
    else:
      assert d.turns[-1].text in sandbox.ES_GOODBYE and d.num_agent_turns == 3
  s = oracle.summarize(rows)
  assert s["first_turn_helpful"] == 0.0 and s["unmatched_rate"] == 0.0


def test_live_world_p4g_and_pairing():
  agent = FixedAgent([LOGICAL])
  rows = oracle.simulate_world(agent, _starts("p4g", 4000), "p4g", seed=1)
  assert all(d.outcome["expected"] == pytest.approx(sandbox.donation_mean(3)) for d in rows)
  r = np.array([d.outcome["reward"] for d in rows])
  assert abs(r.mean() - 1.5625) < 4 * r.std() / np.sqrt(r.size)
  # the world's coins depend on (seed, condition id) only: a second agent meets the same users
  other = oracle.simulate_world(FixedAgent([STORY]), _starts("p4g", 4000), "p4g", seed=1)
  assert np.mean([d.outcome["reward"] for d in other]) < 0.45
  a = oracle.simulate_world(FixedAgent([REFLECT]), _starts("es", 200), "es", seed=2)
  b = oracle.simulate_world(FixedAgent([REFLECT]), _starts("es", 200), "es", seed=2)
  assert [d.outcome["reward"] for d in a] == [d.outcome["reward"] for d in b]


def test_unmatched_text_is_unhelpful():
  rows = oracle.simulate_world(FixedAgent(["zzz qqq ."]), _starts("es", 10), "es", seed=0)
  assert rows[0].outcome["expected"] == pytest.approx(1 - (1 - sandbox.P_BASE) ** 3)
  assert oracle.summarize(rows)["unmatched_rate"] == 1.0


def test_live_delayed_worlds_exact_and_sampled():
  A, R, _, S = sandbox.ES_STRATEGIES
  texts = {s: sandbox.ES_TEMPLATES[s][0] for s in sandbox.ES_STRATEGIES}
  best = oracle.simulate_world(FixedAgent([texts[R], texts[R], texts[S]]), _starts("es", 3000), "es", 0, "delayed")
  greedy = oracle.simulate_world(FixedAgent([texts[A]]), _starts("es", 3000), "es", 0, "delayed")
  for rows, p, imm in ((best, 0.9, [0.0, 0.0, 0.9]), (greedy, 0.1, [1.0, 1.0, 0.1])):
    assert all(d.outcome["expected"] == pytest.approx(p) and d.num_agent_turns == 3 for d in rows)
    assert rows[0].outcome["immediate"] == pytest.approx(imm)
    r = np.array([d.outcome["reward"] for d in rows])
    assert abs(r.mean() - p) < 4 * np.sqrt(p * (1 - p) / r.size)
    for d in rows[:50]:  # the final reply says "better" exactly when the chat is rewarded
      assert (d.turns[-1].text in sandbox.ES_DELAYED_BETTER) == bool(d.outcome["reward"])
  assert all(d.turns[2].text in sandbox.ES_WARM for d in greedy[:50])
  assert oracle.summarize(best)["first_turn_helpful"] == 1.0
  assert oracle.summarize(greedy)["first_turn_helpful"] == 0.0
  assert oracle.transcript_score("es", best[0], "delayed")["expected"] == pytest.approx(0.9)
  log, emo, cred, _ = sandbox.P4G_STRATEGIES
  ptexts = {s: sandbox.P4G_TEMPLATES[s][0] for s in sandbox.P4G_STRATEGIES}
  for plan, mean in (([cred, log, log], 1.5625), ([emo], 0.325)):
    rows = oracle.simulate_world(FixedAgent([ptexts[s] for s in plan]), _starts("p4g", 3000), "p4g", 1, "delayed")
    assert all(d.outcome["expected"] == pytest.approx(mean) for d in rows)
    r = np.array([d.outcome["reward"] for d in rows])
    assert abs(r.mean() - mean) < 4 * r.std() / np.sqrt(r.size)
    assert rows[0].turns[-1].text.endswith(sandbox.P4G_CLOSING)
  assert rows[0].turns[3].text in sandbox.P4G_PLEDGE   # pressure: a pledge at once
