"""Backup on a hand-computed tree: node values are means of the rewards below them."""
from __future__ import annotations

import numpy as np

from engage_jax.data.dialogue import Dialogue, Turn
from engage_jax.search import Expansion, RolloutResult, SearchConfig, search
from engage_jax.search.testing import BanditEnv
from engage_jax.search.tree import NO_PARENT, ROOT_INDEX, UNVISITED

from tests.search._search_helpers import ARMS, ES_CONDITION, es_roots

# Tolerances: rewards here are 0, 1 and 0.25 (exact binary fractions) and values their means over a
# few visits; the tree sums them in float64 on the host in a fixed order, so default assert_allclose
# (rtol 1e-7) holds on any CPU: nothing is vectorised differently between AVX2 and AVX-512.


class ScriptedEnv:
  """Candidates "x" and "y"; rollout reward = fraction of agent turns that are "x";
  a "y" after an "x" ends the chat with reward 0.25 (terminal, reward known)."""

  def __init__(self):
    self.rollout_histories = []

  def expand(self, histories, k, seed):
    out = []
    for h in histories:
      last = [t.text for t in h.turns if t.role == "agent"][-1:]
      row = []
      for text in ["x", "y"][:k]:
        end = text == "y" and last == ["x"]
        row.append(Expansion(agent=Turn("agent", text), user=Turn("user", "[END]" if end else "u"),
                             agent_logprob=-1.0, terminal=end, reward=0.25 if end else None))
      out.append(row)
    return out

  def rollout(self, histories, seed):
    self.rollout_histories.extend(histories)
    res = []
    for h in histories:
      agent = [t.text for t in h.turns if t.role == "agent"]
      res.append(RolloutResult(reward=sum(a == "x" for a in agent) / len(agent), num_turns=0,
                               terminal=False))
    return res


def test_hand_computed_tree():
  env = ScriptedEnv()
  cfg = SearchConfig(k=2, budget=2, max_turns=5, prune_similarity=None)
  root = Dialogue("r", "es", [Turn("user", "hello")], dict(ES_CONDITION))
  t = search(env, [root], cfg)
  # round 1: root -> x (1: r=1.0), y (2: r=0.0); round 2: UCT picks x -> xx (3: r=1.0),
  # xy (4: terminal, r=0.25, no rollout).
  assert t.num_nodes[0] == 5
  assert t.parent[0, :5].tolist() == [NO_PARENT, 0, 0, 1, 1]
  assert t.children[0, 0].tolist() == [1, 2] and t.children[0, 1].tolist() == [3, 4]
  assert (t.children[0, 2:5] == UNVISITED).all()
  assert [t.agent_turn[0][n].text for n in (1, 2, 3, 4)] == ["x", "y", "x", "y"]
  np.testing.assert_allclose(t.reward[0, 1:5], [1.0, 0.0, 1.0, 0.25])
  assert t.visits[0, :5].tolist() == [4, 3, 1, 1, 1]
  np.testing.assert_allclose(t.value()[0, :5], [2.25 / 4, 2.25 / 3, 0.0, 1.0, 0.25])
  assert t.terminal[0, :5].tolist() == [False, False, False, False, True]
  assert not t.truncated[0, :5].any()
  assert len(env.rollout_histories) == 3  # the terminal child used its own reward
  h = t.history(0, 3)
  assert [(x.role, x.text) for x in h.turns] == [("user", "hello"), ("agent", "x"), ("user", "u"),
                                                 ("agent", "x"), ("user", "u")]
  assert t.path_to_root(0, 4) == [4, 1, ROOT_INDEX]


def test_values_are_subtree_means_on_bandit_tree():
  env = BanditEnv(ARMS, max_turns=6, p_end=0.2)
  cfg = SearchConfig(budget=15, max_turns=6, prune_similarity=None, seed=1)
  t = search(env, es_roots(3), cfg)
  for b in range(3):
    n = int(t.num_nodes[b])
    below = {i: [i] for i in range(n)}
    for i in range(n - 1, 0, -1):  # children have larger indices than parents
      below[int(t.parent[b, i])].extend(below[i])
    for i in range(n):
      rewards = [t.reward[b, j] for j in below[i] if j != ROOT_INDEX]
      assert t.visits[b, i] == len(rewards)
      np.testing.assert_allclose(t.value_sum[b, i] / t.visits[b, i], np.mean(rewards))


class UnparsedEnv:
  """Candidates "x", "y", "z": "y" ends the chat with an unparsed outcome (reward NaN); a rollout
  after "z" is unparsed too; every other rollout earns 1.0."""

  def __init__(self):
    self.rollout_histories = []

  def expand(self, histories, k, seed):
    from engage_jax.search.base import UNPARSED
    return [[Expansion(agent=Turn("agent", t), user=Turn("user", "[END]" if t == "y" else "u"),
                       terminal=t == "y", reward=UNPARSED if t == "y" else None)
             for t in ["x", "y", "z"][:k]] for _ in histories]

  def rollout(self, histories, seed):
    self.rollout_histories.extend(histories)
    from engage_jax.search.base import UNPARSED
    return [RolloutResult(reward=UNPARSED if h.turns[-2].text == "z" else 1.0, num_turns=0,
                          terminal=False) for h in histories]


def test_unparsed_outcomes_are_counted_not_backed_up_as_zero():
  env = UnparsedEnv()
  rounds = []
  cfg = SearchConfig(k=3, budget=4, max_depth=3, max_turns=8, prune_similarity=None, seed=0)
  trees = search(env, es_roots(1), cfg, on_round=rounds.append)
  n = int(trees.num_nodes[0])
  nan = np.isnan(trees.reward[0, 1:n])
  assert nan.sum() == sum(r.unparsed for r in rounds) > 0
  # terminal unparsed children are not rolled out again
  assert all(h.turns[-2].text != "y" for h in env.rollout_histories)
  # only parsed rewards (all 1.0) are backed up: every visited node's value is 1.0, and visits
  # count the parsed rewards below a node
  vis = trees.visits[0, :n] > 0
  np.testing.assert_allclose(trees.value()[0, :n][vis], 1.0)
  assert trees.visits[0, ROOT_INDEX] == int((~nan).sum())


def test_model_env_reward_and_run_summary_count_unparsed(tmp_path):
  from engage_jax.search import run_search
  from engage_jax.search.env import _scored_reward
  assert np.isnan(_scored_reward({"reward": 0.0, "donation": None}))   # rollout's $0 placeholder
  assert _scored_reward({"reward": 0.5, "donation": 0.5}) == 0.5
  assert _scored_reward({"reward": 1.0}) == 1.0                          # ES: no donation key
  cfg = SearchConfig(k=3, budget=4, max_depth=3, max_turns=8, prune_similarity=None, seed=0)
  summary = run_search(UnparsedEnv(), es_roots(3), cfg, str(tmp_path), trees_per_shard=2, progress=False)
  assert summary["unparsed"] > 0 and summary["children"] == 3 * 4 * 3
  assert summary["unparsed_rate"] == summary["unparsed"] / summary["children"]
  again = run_search(UnparsedEnv(), es_roots(3), cfg, str(tmp_path), trees_per_shard=2, progress=False)
  assert again["shards_skipped"] == 2 and again["unparsed"] == summary["unparsed"]
