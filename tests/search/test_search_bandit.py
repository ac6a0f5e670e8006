"""i×MCTS on a bandit stand-in: the best arm gets the most visits and the pairs prefer it."""
from __future__ import annotations

import numpy as np
import pytest

from engage_jax.search import SearchConfig, extract_pairs, search
from engage_jax.search.testing import BanditEnv, SequentialEnv
from engage_jax.search.tree import ROOT_INDEX

from tests.search._search_helpers import ARMS, es_roots


def _best_child(trees, b):
  kids = trees.child_indices(b, ROOT_INDEX)
  return trees.agent_turn[b][kids[int(np.argmax(trees.visits[b, kids]))]].strategy


@pytest.mark.parametrize("selection", ["uct", "puct"])
def test_most_visits_on_best_arm_noise_free(selection):
  env = BanditEnv(ARMS, max_turns=6, bernoulli=False)
  cfg = SearchConfig(budget=20, max_turns=6, max_depth=6, prune_similarity=None, selection=selection)
  trees = search(env, es_roots(6), cfg)
  assert all(_best_child(trees, b) == "good" for b in range(6))
  assert (trees.expansions == 20).all()
  pairs = extract_pairs(trees, cfg.margin)
  assert pairs
  root_pairs = [p for p in pairs if p["meta"]["depth"] == 0]
  assert all(p["meta"]["rejected_strategy"] != "good" for p in root_pairs)
  assert all(p["meta"]["chosen_value"] - p["meta"]["rejected_value"] >= cfg.margin for p in pairs)


def test_pairs_prefer_best_arm_with_bernoulli_rewards():
  env = BanditEnv(ARMS, max_turns=6, p_end=0.1)
  cfg = SearchConfig(budget=20, max_turns=6, max_depth=6, prune_similarity=None, seed=3)
  trees = search(env, es_roots(16), cfg)
  best = sum(_best_child(trees, b) == "good" for b in range(16))
  assert best >= 11, best
  pairs = extract_pairs(trees, cfg.margin)
  chosen_good = sum(p["meta"]["chosen_strategy"] == "good" for p in pairs)
  rejected_good = sum(p["meta"]["rejected_strategy"] == "good" for p in pairs)
  good_bad = sum((p["meta"]["chosen_strategy"], p["meta"]["rejected_strategy"]) == ("good", "bad")
                 for p in pairs)
  bad_good = sum((p["meta"]["chosen_strategy"], p["meta"]["rejected_strategy"]) == ("bad", "good")
                 for p in pairs)
  assert chosen_good > 1.5 * rejected_good, (chosen_good, rejected_good)
  assert good_bad > 2 * bad_good, (good_bad, bad_good)
  # terminal children exist (p_end) and were never expanded
  assert trees.terminal.any()
  assert not (trees.terminal & trees.expanded).any()


def test_one_expand_and_at_most_one_rollout_call_per_round():
  env = BanditEnv(ARMS, max_turns=6)
  cfg = SearchConfig(budget=5, max_turns=6, prune_similarity=None)
  rounds = []
  trees = search(env, es_roots(8), cfg, on_round=rounds.append)
  assert env.expand_calls == len(rounds) == 5
  assert env.rollout_calls == 5
  assert all(r.expansions == 8 for r in rounds)
  assert int(trees.expansions.sum()) == 40


def test_sequential_env_same_budget_more_calls():
  inner = BanditEnv(ARMS, max_turns=6)
  cfg = SearchConfig(budget=4, max_turns=6, prune_similarity=None)
  trees = search(SequentialEnv(inner), es_roots(3), cfg)
  assert int(trees.expansions.sum()) == 12
  assert inner.expand_calls == 12  # one leaf at a time
  assert inner.rollout_calls == int(trees.num_nodes.sum()) - 3  # one child at a time


def test_prune_near_duplicate_siblings():
  texts = {"good": ["I hear you, that sounds hard."], "ok": ["I hear you, that sounds hard!"],
           "bad": ["Just get over it."]}
  env = BanditEnv(ARMS, max_turns=4, texts=texts)
  cfg = SearchConfig(budget=3, max_turns=4, prune_similarity=0.9)
  trees = search(env, es_roots(1), cfg)
  kids = trees.child_indices(0, ROOT_INDEX)
  assert len(kids) == 2
  texts_kept = [trees.agent_turn[0][c].text for c in kids]
  assert "Just get over it." in texts_kept
  cfg_j = SearchConfig(budget=3, max_turns=4, prune_similarity=0.9, similarity="jaccard")
  trees = search(env, es_roots(1), cfg_j)
  assert len(trees.child_indices(0, ROOT_INDEX)) == 2


def test_max_live_caps_expandable_leaves():
  env = BanditEnv(ARMS, max_turns=8, bernoulli=False)
  cfg = SearchConfig(budget=10, max_turns=8, max_depth=8, prune_similarity=None, max_live=2)
  trees = search(env, es_roots(2), cfg)
  for b in range(2):
    n = int(trees.num_nodes[b])
    live = [i for i in range(n) if not trees.expanded[b, i] and not trees.terminal[b, i]
            and not trees.truncated[b, i] and not trees.capped[b, i]]
    assert len(live) <= 2
    assert trees.capped[b, :n].any()
    assert not (trees.capped[b] & trees.expanded[b]).any()


def test_depth_and_turn_caps():
  env = BanditEnv(ARMS, max_turns=3)
  cfg = SearchConfig(budget=30, max_turns=3, max_depth=5, prune_similarity=None)
  trees = search(env, es_roots(2), cfg)
  # root has 0 agent turns: depth-3 children reach the cap and are truncated, never expanded
  n = trees.num_nodes
  for b in range(2):
    d = trees.depth[b, :n[b]]
    assert d.max() == 3
    assert trees.truncated[b, :n[b]][d == 3].all()
    assert not trees.truncated[b, :n[b]][d < 3].any()
    assert not (trees.truncated[b] & trees.expanded[b]).any()
  # the whole tree (1 + 3 + 9 expandable nodes) is exhausted before the budget
  assert (trees.expansions == 13).all()
  assert trees.closed[:, ROOT_INDEX].all()
  cfg = SearchConfig(budget=30, max_turns=10, max_depth=2, prune_similarity=None)
  trees = search(BanditEnv(ARMS, max_turns=10), es_roots(1), cfg)
  assert trees.depth[0, :trees.num_nodes[0]].max() == 2
  assert int(trees.expansions[0]) == 4
