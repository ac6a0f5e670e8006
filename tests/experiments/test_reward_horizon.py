"""search.reward_horizon: "turn" rewards are the next-turn regex (no rollouts); "future" unchanged."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from engage_jax import rewards
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.search import env as env_mod
from engage_jax.search.base import Expansion, RolloutResult
from engage_jax.search.testing import BanditEnv
from engage_jax.search.imcts import SearchConfig, search

REPLIES = ("thank you , i feel much better now .", "it is still hard for me .",
           "that really helps , thanks .", "i do not know , it is not easy .",
           "you have been a great help , thank you .", "i still feel sad about it .")


class ScriptedEnv:
  """ES env with scripted user replies (cycled); rollouts always return 0.5 (and are counted)."""

  task, reward_cfg, max_turns = "es", None, 4

  def __init__(self):
    self.n, self.rollouts = 0, 0

  def expand(self, histories, k, seed):
    out = []
    for _ in histories:
      row = []
      for _ in range(k):
        text = REPLIES[self.n % len(REPLIES)]
        self.n += 1
        row.append(Expansion(agent=Turn(AGENT, f"agent {self.n}"), user=Turn(USER, text)))
      out.append(row)
    return out

  def rollout(self, histories, seed):
    self.rollouts += len(histories)
    return [RolloutResult(0.5, 1, True) for _ in histories]

  turn_rewards = env_mod.ModelEnv.turn_rewards


def _roots(n):
  cond = {"emotion_type": "sadness", "problem_type": "job crisis", "situation": "i feel sad ."}
  return [Dialogue(f"r{i}", "es", [Turn(USER, "hi . i feel sad because of my job .")], dict(cond))
          for i in range(n)]


def test_turn_rewards_are_the_next_turn_regex():
  env = ScriptedEnv()
  cfg = SearchConfig(k=3, budget=4, max_depth=3, max_turns=4, prune_similarity=None,
                     reward_horizon="turn")
  trees = search(env, _roots(2), cfg)
  assert env.rollouts == 0
  rx = re.compile(rewards.DEFAULT_ES_PATTERN, re.I)
  checked = 0
  for b in range(trees.batch_size):
    for n in range(1, int(trees.num_nodes[b])):
      want = 1.0 if rx.search(trees.user_turn[b][n].text) else 0.0
      assert trees.reward[b, n] == want
      checked += 1
  assert checked == 2 * 4 * 3
  # half the scripted replies match: the rewards are not constant
  assert 0 < np.nansum(trees.reward[:, 1:]) < checked


def test_future_is_the_default_and_uses_rollouts():
  env = ScriptedEnv()
  cfg = SearchConfig(k=3, budget=2, max_depth=3, max_turns=4, prune_similarity=None)
  assert cfg.reward_horizon == "future"
  trees = search(env, _roots(1), cfg)
  assert env.rollouts == 6
  assert np.all(trees.reward[0, 1:7] == 0.5)


def test_future_bit_for_bit_with_bandit_env():
  arms = {"a": 0.2, "b": 0.7, "c": 0.5}
  base = SearchConfig(k=3, budget=6, max_depth=3, max_turns=4, prune_similarity=None, seed=3)
  t1 = search(BanditEnv(arms, max_turns=4), _roots(3), base)
  t2 = search(BanditEnv(arms, max_turns=4), _roots(3), dataclasses.replace(base, reward_horizon="future"))
  np.testing.assert_array_equal(t1.value_sum, t2.value_sum)
  np.testing.assert_array_equal(t1.visits, t2.visits)


def test_p4g_turn_reward():
  u = lambda text: Turn(USER, text)
  a = Turn(AGENT, "x")
  assert env_mod.turn_reward("p4g", Expansion(a, u("ok , i will donate $1.50 ."))) == 1.5
  assert env_mod.turn_reward("p4g", Expansion(a, u("wow , that is a good point ."))) == 0.0
  assert env_mod.turn_reward("p4g", Expansion(a, u("thanks ."), terminal=True, reward=2.0)) == 2.0
  # ES: only the reply itself counts
  assert env_mod.turn_reward("es", Expansion(a, u("that really helps , thanks ."))) == 1.0
  assert env_mod.turn_reward("es", Expansion(a, u("it is still hard for me ."))) == 0.0


def test_bad_horizon_and_env_without_turn_rewards():
  with pytest.raises(ValueError, match="reward_horizon"):
    SearchConfig(reward_horizon="week")
  with pytest.raises(ValueError, match="turn_rewards"):
    search(BanditEnv({"a": 0.5, "b": 0.5}, max_turns=4), _roots(1),
           SearchConfig(k=2, budget=1, max_turns=4, reward_horizon="turn"))
