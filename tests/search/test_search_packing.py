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


def test_crash_with_trees_in_flight_across_shards_then_resume(tmp_path):
  """5 trees in flight over shards of 2: a crash after shard 1 is written (trees of later shards
  half searched) loses only unwritten work; resuming with another trees_in_flight gives the pairs
  of an uninterrupted run, and shards are written in order."""
  ref_out = str(tmp_path / "ref")
  ref_summary = run_search(_env(), es_roots(9), CFG, ref_out, trees_per_shard=2, progress=False)
  ref = read_search_pairs(ref_out)
  out = str(tmp_path / "crashed")
  written = []

  class Boom(Exception):
    pass

  def crash(s):
    written.append(s)
    if s == 1:
      raise Boom

  with pytest.raises(Boom):
    run_search(_env(), es_roots(9), CFG, out, trees_per_shard=2, trees_in_flight=5, progress=False,
               after_shard=crash)
  assert written == [0, 1]
  env = RowLog(ARMS, max_turns=5, p_end=0.3)
  summary = run_search(env, es_roots(9), CFG, out, trees_per_shard=2, trees_in_flight=1, progress=False,
                       after_shard=written.append)
  assert summary["shards_skipped"] == 2 and written == [0, 1, 2, 3, 4]
  assert read_search_pairs(out) == ref
  assert summary["expansions"] == ref_summary["expansions"] and max(env.expand_rows) == 1


def test_resumed_run_deduplicates_against_the_skipped_shards(tmp_path):
  """Trees with the same opening and one text per arm repeat each other's pairs: every pair is
  kept once, in the first shard that found it, also when a resumed run skips that shard."""
  from engage_jax.data.dialogue import Dialogue, Turn
  from engage_jax.search.pairs import pair_key
  from tests.search._search_helpers import ES_CONDITION
  roots = [Dialogue(f"c{i}", "es", [Turn("user", "hi, I feel low")], dict(ES_CONDITION)) for i in range(6)]

  def env():
    return BanditEnv(ARMS, max_turns=5, texts={a: [f"say {a}"] for a in ARMS}, bernoulli=False)

  ref_out = str(tmp_path / "ref")
  run_search(env(), roots, CFG, ref_out, trees_per_shard=2, progress=False)
  ref = read_search_pairs(ref_out)
  keys = [pair_key(p) for p in ref]
  assert len(keys) == len(set(keys)) > 0
  assert min(p["meta"]["tree_id"] for p in ref if p["meta"]["depth"] == 0) == 0  # root pairs: tree 0's

  class Boom(Exception):
    pass

  def crash(s):
    if s == 0:
      raise Boom

  out = str(tmp_path / "crashed")
  with pytest.raises(Boom):
    run_search(env(), roots, CFG, out, trees_per_shard=2, trees_in_flight=6, progress=False, after_shard=crash)
  run_search(env(), roots, CFG, out, trees_per_shard=2, trees_in_flight=3, progress=False)
  assert read_search_pairs(out) == ref
