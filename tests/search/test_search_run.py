"""Resumable runner: shard files, restart after a crash/kill gives the same pairs, pair format."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engage_jax.search import SearchConfig, read_search_pairs, run_search
from engage_jax.search.testing import BanditEnv
from engage_jax.search.pairs import pair_key

from tests.search._search_helpers import ARMS, es_roots

CFG = SearchConfig(budget=6, max_turns=5, prune_similarity=0.95, seed=11)
N_ROOTS, PER_SHARD = 7, 2  # 4 shards, the last one short


def _env():
  return BanditEnv(ARMS, max_turns=5, p_end=0.1)


def _keys(pairs):
  return [pair_key(p) for p in pairs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ref"))
  summary = run_search(_env(), es_roots(N_ROOTS), CFG, out, trees_per_shard=PER_SHARD,
                       progress=False)
  return out, summary, read_search_pairs(out)


def test_uninterrupted_run_layout(reference):
  out, summary, pairs = reference
  assert summary["trees"] == N_ROOTS and summary["shards"] == 4
  assert summary["pairs"] == len(pairs) > 0
  assert summary["expansions"] == N_ROOTS * CFG.budget
  assert sorted(os.listdir(os.path.join(out, "pairs"))) == [f"shard-{i:05d}.jsonl" for i in range(4)]
  assert sorted(os.listdir(os.path.join(out, "trees"))) == [f"shard-{i:05d}.json" for i in range(4)]
  keys = _keys(pairs)
  assert len(keys) == len(set(keys))
  stats = json.load(open(os.path.join(out, "trees", "shard-00003.json")))
  assert stats["tree_ids"] == [6] and stats["trees"][0]["expansions"] == CFG.budget
  assert {"visits", "value", "depth", "parent"} <= set(stats["trees"][0])
  # a finished run is skipped entirely on restart
  env = _env()
  again = run_search(env, es_roots(N_ROOTS), CFG, out, trees_per_shard=PER_SHARD, progress=False)
  assert env.expand_calls == 0 and again["shards_skipped"] == 4 and again["pairs"] == len(pairs)


def test_pair_format(reference):
  _, _, pairs = reference
  for p in pairs:
    assert set(p) == {"prompt", "chosen", "rejected", "meta"}
    assert p["prompt"] and all(set(m) == {"role", "content"} for m in p["prompt"])
    assert p["prompt"][-1]["role"] == "user"
    assert len(p["chosen"]) == 1 and p["chosen"][0]["role"] == "assistant"
    assert len(p["rejected"]) == 1 and p["rejected"][0]["role"] == "assistant"
    m = p["meta"]
    for f in ("tree_id", "condition_id", "depth", "chosen_value", "rejected_value",
              "chosen_visits", "rejected_visits", "margin"):
      assert f in m
    assert m["chosen_value"] - m["rejected_value"] >= CFG.margin
    assert m["condition_id"] == f"c{m['tree_id']}"


def test_exception_after_shard_then_resume(tmp_path, reference):
  _, _, ref_pairs = reference
  out = str(tmp_path / "run")

  class Boom(Exception):
    pass

  def crash(s):
    if s == 1:
      raise Boom

  with pytest.raises(Boom):
    run_search(_env(), es_roots(N_ROOTS), CFG, out, trees_per_shard=PER_SHARD, progress=False,
               after_shard=crash)
  assert len(os.listdir(os.path.join(out, "pairs"))) == 2
  env = _env()
  summary = run_search(env, es_roots(N_ROOTS), CFG, out, trees_per_shard=PER_SHARD,
                       progress=False)
  assert summary["shards_skipped"] == 2
  assert _keys(read_search_pairs(out)) == _keys(ref_pairs)
  assert read_search_pairs(out) == ref_pairs


def test_resume_with_other_config_is_an_error(tmp_path):
  out = str(tmp_path / "run")
  run_search(_env(), es_roots(2), CFG, out, trees_per_shard=PER_SHARD, progress=False)
  with pytest.raises(ValueError, match="different config"):
    run_search(_env(), es_roots(2), CFG.__class__(**{**CFG.__dict__, "margin": 0.5}), out,
               trees_per_shard=PER_SHARD, progress=False)


SCRIPT = textwrap.dedent("""
  import os, sys, time
  sys.path.insert(0, {repo!r})
  from engage_jax.search import SearchConfig, run_search
  from engage_jax.search.testing import BanditEnv
  from tests.search._search_helpers import ARMS, es_roots

  SIGNAL = {signal!r}

  class Blocking(BanditEnv):
    # once shard 0 is written (the signal exists), the next expand blocks: killed mid-shard 1
    def expand(self, histories, k, seed):
      while os.path.exists(SIGNAL):
        time.sleep(1)
      return super().expand(histories, k, seed)

  def after_shard(s):
    if s == 0:
      open(SIGNAL + ".tmp", "w").close()
      os.replace(SIGNAL + ".tmp", SIGNAL)

  cfg = SearchConfig(budget=6, max_turns=5, prune_similarity=0.95, seed=11)
  run_search(Blocking(ARMS, max_turns=5, p_end=0.1), es_roots({n}), cfg, {out!r},
             trees_per_shard={per}, progress=False, after_shard=after_shard)
""")


def test_sigkill_mid_run_then_resume(tmp_path, reference):
  """Killed at a known point (mid-shard 1, after shard 0 is written), then resumed: the pairs are
  those of an uninterrupted run, none twice, and exactly the finished shard is skipped."""
  _, _, ref_pairs = reference
  out = str(tmp_path / "killed")
  sig = str(tmp_path / "shard0.done")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  script = SCRIPT.format(repo=repo, n=N_ROOTS, out=out, per=PER_SHARD, signal=sig)
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while not os.path.exists(sig) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert os.path.exists(sig), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done = sorted(os.listdir(os.path.join(out, "pairs")))
  assert done == ["shard-00000.jsonl"], done
  assert sorted(os.listdir(os.path.join(out, "trees"))) == ["shard-00000.json"]
  summary = run_search(_env(), es_roots(N_ROOTS), CFG, out, trees_per_shard=PER_SHARD, progress=False)
  assert summary["shards_skipped"] == 1
  pairs = read_search_pairs(out)
  assert pairs == ref_pairs
  assert len(set(_keys(pairs))) == len(pairs)


def test_pair_prompt_is_the_history_before_the_choice(reference):
  """Every pair's prompt is the agent's view of the chat up to the user turn that the chosen and
  rejected replies answer: as many assistant turns as the parent node's depth (a prompt that held
  its own chosen turn would have one more, and would teach the agent to repeat itself), and the
  chosen and rejected nodes are children of that node in the stored tree."""
  out, _, pairs = reference
  trees = {}
  for name in sorted(os.listdir(os.path.join(out, "trees"))):
    rec = json.load(open(os.path.join(out, "trees", name)))
    trees.update(zip(rec["tree_ids"], rec["trees"]))
  assert any(p["meta"]["depth"] >= 1 for p in pairs)  # deeper nodes are covered too
  for p in pairs:
    m = p["meta"]
    assistant = [x["content"] for x in p["prompt"] if x["role"] == "assistant"]
    assert len(assistant) == m["depth"], (m, p["prompt"])
    assert p["prompt"][-1]["role"] == "user"
    parent = trees[m["tree_id"]]["parent"]
    assert parent[m["chosen_node"]] == parent[m["rejected_node"]] == m["node"], m
    assert m["depth"] == trees[m["tree_id"]]["depth"][m["node"]]
