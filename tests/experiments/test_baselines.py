"""Baselines with scripted speakers: best-of-N keeps the candidate its lookahead values most (ES
regex, P4G stated donation), counts its samples; corpus pairs; RFT examples."""
from __future__ import annotations

import pytest

from engage_jax.data import chat, sandbox
from engage_jax.data.dialogue import AGENT, Dialogue
from engage_jax.experiments import baselines


class Agent:
  """Cycles through `texts`, one per prompt."""

  def __init__(self, texts):
    self.texts, self.n = texts, 0

  def generate(self, messages, seed):
    out = []
    for _ in messages:
      out.append(self.texts[self.n % len(self.texts)])
      self.n += 1
    return out


class Sim:
  """Ends every chat; ES: engaged iff the last agent turn says "good"; P4G: donates $2 iff it does."""

  def generate(self, messages, seed):
    out = []
    for m in messages:
      if m[-1]["content"] == chat.OUTCOME_REQUEST:
        good = "good" in m[-3]["content"]
        out.append(chat.outcome_line(2.0 if good else 0.0))
      else:
        out.append(("that really helps , thanks ." if "good" in m[-1]["content"] else "hmm .") + " [END]")
    return out


@pytest.mark.parametrize("task", ["es", "p4g"])
def test_best_of_n_keeps_the_best_valued_candidate(task):
  cond = ({"emotion_type": "sadness", "problem_type": "job crisis", "situation": "s"} if task == "es"
          else {"motivation": "numbers", "age_group": "young", "hobby": "music"})
  hist = [Dialogue(f"h{i}", task, sandbox.opening_turns(task, cond), dict(cond)) for i in range(3)]
  policy = baselines.BestOfN(Agent(["bad one", "good one", "bad two"]), Sim(), 3, task, 4)
  assert policy.choose(hist, seed=0) == ["good one"] * 3
  assert policy.agent_samples == 9   # 3 candidates x 3 rows; every lookahead ended at once
  rows = baselines.simulate_best_of_n(policy, Sim(), hist, task=task, max_agent_turns=4)
  assert all(d.outcome["reward"] == (1.0 if task == "es" else 2.0) for d in rows)
  assert all(d.outcome["agent_samples"] == 3 for d in rows)


def test_corpus_pairs_and_rft_examples():
  corpus = sandbox.generate("es", 60, seed=3)
  items = baselines.corpus_prompts("es", corpus)
  engaged = [d for d in corpus if d.outcome["engaged"]]
  assert len(items) == len(engaged) > 0
  for hist, chosen, did in items:
    d = next(x for x in corpus if x.id == did)
    assert chosen.role == AGENT and d.turns[len(hist)] is chosen
    assert d.turns[len(hist) + 1].text in sandbox.ES_ENGAGED
  pairs = baselines.corpus_pairs("es", corpus, Agent(["zzz ."]), 5, seed=0)
  assert len(pairs) == 5 and all(p["rejected"][0]["content"] == "zzz ." and p["meta"]["source"] == "corpus" for p in pairs)
  p4g = baselines.corpus_prompts("p4g", sandbox.generate("p4g", 60, seed=3))
  assert p4g and all(t.strategy != "Greeting" for _, t, _ in p4g)
  mk = lambda v, c: {"prompt": [{"role": "system", "content": "s"}], "chosen": [{"role": "assistant", "content": c}],
                     "rejected": [{"role": "assistant", "content": "r"}], "meta": {"chosen_value": v}}
  ex = baselines.rft_examples([mk(0.9, "a"), mk(0.9, "a"), mk(0.2, "b"), mk(0.5, "c")], 0.5)
  assert [m[-1]["content"] for m in ex] == ["a", "c"]
