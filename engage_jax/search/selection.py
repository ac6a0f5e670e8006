"""Selection rules of i×MCTS: a child-scoring function per `SearchConfig.selection`, and the
descent from the root to the leaf to expand.

    scores = SELECTION_RULES[cfg.selection](trees, b, node, kids, cfg)   # [len(kids)] float64
    leaf = select_leaf(trees, b, cfg)

Every rule returns Q + bonus, Q the children's mean values (min-max normalised over the tree's
visited nodes when cfg.q_normalize, mctx-style; 0.5 for all when every visited value is equal).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from engage_jax.search.tree import ROOT_INDEX, Trees


def child_values(trees: Trees, b: int, kids: np.ndarray, q_normalize: bool) -> np.ndarray:
  """Q of `kids` in tree b, [len(kids)] float64 (0 for unvisited children before normalising)."""
  visits = trees.visits[b, kids].astype(np.float64)
  q = trees.value_sum[b, kids] / np.maximum(visits, 1.0)
  if q_normalize:
    n = int(trees.num_nodes[b])
    vis = trees.visits[b, :n] > 0
    vals = trees.value_sum[b, :n][vis] / trees.visits[b, :n][vis]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    q = (q - lo) / (hi - lo) if hi > lo else np.full_like(q, 0.5)
  return q


def _parent_visits(trees: Trees, b: int, node: int) -> float:
  return float(max(trees.visits[b, node], 1))


def uct_scores(trees: Trees, b: int, node: int, kids: Sequence[int], cfg) -> np.ndarray:
  """Q + c sqrt(ln N_parent / N_child) of `kids` (children of `node` in tree b); an unvisited
  child scores inf. [len(kids)] float64."""
  kids = np.asarray(kids)
  visits = trees.visits[b, kids].astype(np.float64)
  q = child_values(trees, b, kids, cfg.q_normalize)
  bonus = cfg.c * np.sqrt(math.log(_parent_visits(trees, b, node)) / np.maximum(visits, 1.0))
  bonus = np.where(visits > 0, bonus, np.inf)
  return q + bonus


def sibling_priors(trees: Trees, b: int, node: int, kids: np.ndarray,
                   temperature: float) -> np.ndarray:
  """P of `kids`: softmax of the agent's log-prob priors / temperature over ALL children of
  `node` (not only `kids`), [len(kids)] float64."""
  siblings = trees.child_indices(b, node)
  logits = trees.prior[b, siblings] / temperature
  p = np.exp(logits - logits.max())
  p = dict(zip(siblings, p / p.sum()))
  return np.array([p[int(c)] for c in kids])


def puct_scores(trees: Trees, b: int, node: int, kids: Sequence[int], cfg) -> np.ndarray:
  """Q + c P sqrt(N_parent) / (1 + N_child), P = `sibling_priors` at cfg.prior_temperature.
  [len(kids)] float64."""
  kids = np.asarray(kids)
  visits = trees.visits[b, kids].astype(np.float64)
  q = child_values(trees, b, kids, cfg.q_normalize)
  prior = sibling_priors(trees, b, node, kids, cfg.prior_temperature)
  bonus = cfg.c * prior * math.sqrt(_parent_visits(trees, b, node)) / (1.0 + visits)
  return q + bonus


# SearchConfig.selection → scoring rule (trees, b, node, kids, cfg) -> [len(kids)] float64
SELECTION_RULES: dict[str, Callable[..., np.ndarray]] = {"uct": uct_scores, "puct": puct_scores}


def child_scores(trees: Trees, b: int, node: int, kids: Sequence[int], cfg) -> np.ndarray:
  """Scores of `kids` (children of `node` in tree b) by the rule cfg.selection names."""
  return SELECTION_RULES[cfg.selection](trees, b, node, kids, cfg)


def select_leaf(trees: Trees, b: int, cfg) -> int:
  """Descends tree b from the root through open children by max score (first index on ties)."""
  node = ROOT_INDEX
  while trees.expanded[b, node]:
    kids = [c for c in trees.child_indices(b, node) if not trees.closed[b, c]]
    if not kids:
      raise RuntimeError(f"tree {b}: open node {node} has no open child (closed flags stale)")
    node = kids[int(np.argmax(child_scores(trees, b, node, kids, cfg)))]
  return node
