"""Full batches in the search: trees in flight across shards (a finished tree is replaced at once),
and per-tree seeds, so the pairs do not depend on how trees are packed into env calls."""
from __future__ import annotations

import pytest

from engage_jax.search import SearchConfig, read_search_pairs, run_search, search
from engage_jax.search.testing import BanditEnv, SequentialEnv

from tests.search._search_helpers import ARMS, es_roots

CFG = SearchConfig(budget=5, max_turns=5, prune_similarity=0.95, seed=3)


class RowLog(BanditEnv):
  """A BanditEnv that records the number of histories of every expand call."""

  def __init__(self, *a, **kw):
    super().__init__(*a, **kw)
    self.expand_rows: list[int] = []

  def expand(self, histories, k, seed):
    self.expand_rows.append(len(histories))
    return super().expand(histories, k, seed)


def _env(cls=BanditEnv):
  # p_end ends chats early at random, so trees finish after different numbers of rounds
  return cls(ARMS, max_turns=5, p_end=0.3)


def _run(tmp_path, name, per_shard, in_flight, env=None):
  out = str(tmp_path / name)
  run_search(env or _env(), es_roots(9), CFG, out, trees_per_shard=per_shard, trees_in_flight=in_flight,
             progress=False)
  return read_search_pairs(out)


def test_pairs_do_not_depend_on_shards_or_trees_in_flight(tmp_path):
  ref = _run(tmp_path, "a", per_shard=2, in_flight=0)
  assert len(ref) > 10
  assert _run(tmp_path, "b", per_shard=8, in_flight=0) == ref
  assert _run(tmp_path, "c", per_shard=3, in_flight=1) == ref
  assert _run(tmp_path, "d", per_shard=2, in_flight=9) == ref
  # one history per call (the straightforward baseline) gives the same trees too
  assert _run(tmp_path, "e", per_shard=4, in_flight=4, env=SequentialEnv(_env())) == ref


def test_finished_trees_are_replaced_at_once():
  """in_flight=3 over 9 trees: every round expands min(3, unfinished trees) leaves (a finished
  tree's place goes to the next waiting one in the next round), one expand call per round."""
  env = _env(RowLog)
  rounds = []
  trees = search(env, es_roots(9), CFG, in_flight=3, on_round=rounds.append)
  assert env.expand_rows == [r.expansions for r in rounds]
  unfinished = 9
  for r in rounds:
    assert r.expansions == min(3, unfinished), [(x.expansions, x.finished) for x in rounds]
    unfinished -= len(r.finished)
  assert unfinished == 0 and int(trees.expansions.sum()) == sum(env.expand_rows)
  # the trees finish at different rounds while others wait, so the refill is exercised
  assert sum(1 for r in rounds[:-1] if r.finished) >= 3


def test_in_flight_must_not_be_negative():
  with pytest.raises(ValueError, match="in_flight"):
    search(_env(), es_roots(2), CFG, in_flight=-1)
