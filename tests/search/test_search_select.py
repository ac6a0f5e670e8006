"""UCT / PUCT child scores pinned against hand computations (q_normalize, prior_temperature)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engage_jax.data.dialogue import Turn
from engage_jax.search import SearchConfig
from engage_jax.search.selection import child_scores
from engage_jax.search.tree import ROOT_INDEX, init_trees

from tests.search._search_helpers import es_roots

# Tolerances: child_scores is float64 numpy on a hand-set tree, so it equals the hand formula to
# rtol 1e-9 (numpy's exp/log/sqrt may differ by an ulp between ISAs: 1e7 ulps of room), and the
# 7-digit literals to rtol 1e-6 (their own rounding). Nothing here depends on the CPU.


@pytest.fixture
def tree():
  """Root (10 visits, value sum 5.5) with children of visits [6, 3, 1], value sums [3.0, 2.4,
  0.1] (Q = [0.5, 0.8, 0.1]) and agent log-prob priors [-1, -2, -3]; a 4th child unvisited."""
  t = init_trees(es_roots(1), 8, 4)
  kids = t.add_children(0, ROOT_INDEX, [Turn("agent", f"a{i}") for i in range(4)],
                        [Turn("user", "u")] * 4, priors=[-1.0, -2.0, -3.0, -4.0],
                        terminal=[False] * 4, truncated=[False] * 4)
  t.visits[0, ROOT_INDEX], t.value_sum[0, ROOT_INDEX] = 10, 5.5
  t.visits[0, kids] = [6, 3, 1, 0]
  t.value_sum[0, kids] = [3.0, 2.4, 0.1, 0.0]
  return t, kids


CFG = SearchConfig(c=1.5)


def test_uct_raw(tree):
  # Q + 1.5 sqrt(ln 10 / n): 0.5 + 0.92923, 0.8 + 1.31413, 0.1 + 2.27614; unvisited: inf
  t, kids = tree
  got = child_scores(t, 0, ROOT_INDEX, kids, dataclasses.replace(CFG, q_normalize=False))
  np.testing.assert_allclose(got[:3], [1.4292305, 2.1141304, 2.3761407], rtol=1e-6)
  assert got[3] == np.inf


def test_uct_q_normalized(tree):
  # min-max over visited nodes (0.55, 0.5, 0.8, 0.1): Q' = [4/7, 1, 0]
  t, kids = tree
  got = child_scores(t, 0, ROOT_INDEX, kids[:3], dataclasses.replace(CFG, q_normalize=True))
  np.testing.assert_allclose(got, [1.5006591, 2.3141304, 2.2761407], rtol=1e-6)


def test_puct_prior_temperature_and_q_normalized(tree):
  # P = softmax([-1, -2, -3, -4] / 2) over all 4 siblings; bonus = 1.5 P sqrt(10) / (1 + n)
  t, kids = tree
  got = child_scores(t, 0, ROOT_INDEX, kids[:3],
                     dataclasses.replace(CFG, selection="puct", prior_temperature=2.0, q_normalize=True))
  e = np.exp(np.array([-0.5, -1.0, -1.5, -2.0]) + 0.5)
  p = e / e.sum()
  want = np.array([4 / 7, 1.0, 0.0]) + 1.5 * p[:3] * np.sqrt(10) / (1 + np.array([6, 3, 1]))
  np.testing.assert_allclose(got, want, rtol=1e-9)
  np.testing.assert_allclose(got, [0.8797874, 1.3273009, 0.3970361], rtol=1e-6)
  np.testing.assert_allclose(p[:3], [0.4550542, 0.2760043, 0.1674051], rtol=1e-6)


def test_puct_raw_temperature_one(tree):
  t, kids = tree
  got = child_scores(t, 0, ROOT_INDEX, kids,
                     dataclasses.replace(CFG, selection="puct", prior_temperature=1.0, q_normalize=False))
  e = np.exp(np.array([0.0, -1.0, -2.0, -3.0]))
  p = e / e.sum()
  want = np.array([0.5, 0.8, 0.1, 0.0]) + 1.5 * p * np.sqrt(10) / (1 + np.array([6, 3, 1, 0]))
  np.testing.assert_allclose(got, want, rtol=1e-9)
  np.testing.assert_allclose(got, [0.9363362, 1.0809085, 0.3066809, 0.1520673], rtol=1e-6)
