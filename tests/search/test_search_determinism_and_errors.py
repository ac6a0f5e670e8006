"""Same seed → same tree and pairs; bad input → ValueError before any env call."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engage_jax.data.dialogue import Dialogue, Turn
from engage_jax.search import SearchConfig, extract_pairs, run_search, search
from engage_jax.search.testing import BanditEnv

from tests.search._search_helpers import ARMS, ES_CONDITION, es_roots

ARRAYS = ["parent", "depth", "visits", "value_sum", "terminal", "truncated", "reward", "children",
          "closed", "num_nodes"]


def _run(seed):
  env = BanditEnv(ARMS, max_turns=6, p_end=0.1)
  cfg = SearchConfig(budget=8, max_turns=6, prune_similarity=0.95, seed=seed)
  t = search(env, es_roots(4), cfg)
  return t, extract_pairs(t, cfg.margin)


def test_same_seed_same_tree_and_pairs():
  (t1, p1), (t2, p2) = _run(5), _run(5)
  for f in ARRAYS:
    np.testing.assert_array_equal(getattr(t1, f), getattr(t2, f), err_msg=f)
  assert [[x and x.text for x in row] for row in t1.agent_turn] == \
         [[x and x.text for x in row] for row in t2.agent_turn]
  assert p1 == p2
  t3, p3 = _run(6)
  assert p3 != p1


def _env():
  return BanditEnv(ARMS, max_turns=6)


@pytest.mark.parametrize("change,match", [
    ({"budget": 0}, "budget"),
    ({"k": 1}, "k must be >= 2"),
    ({"max_depth": 0}, "max_depth"),
    ({"selection": "greedy"}, "selection"),
    ({"prune_similarity": 1.5}, "prune_similarity"),
    ({"max_turns": 5}, "max_turns"),  # differs from the env's cap
])
def test_bad_config(change, match):
  env = _env()
  cfg = dataclasses.replace(SearchConfig(max_turns=6), **change)
  with pytest.raises(ValueError, match=match):
    search(env, es_roots(2), cfg)
  assert env.expand_calls == 0 and env.rollout_calls == 0


def test_bad_roots(tmp_path):
  env = _env()
  cfg = SearchConfig(max_turns=6)
  missing = Dialogue("m", "es", [Turn("user", "hi")], {"emotion_type": "anger"})
  with pytest.raises(ValueError, match=r"'m'.*problem_type"):
    search(env, es_roots(1) + [missing], cfg)
  with pytest.raises(ValueError, match="empty condition"):
    search(env, [Dialogue("p", "p4g", [], {})], cfg)
  agent_last = Dialogue("a", "es", [Turn("user", "hi"), Turn("agent", "hey")], dict(ES_CONDITION))
  with pytest.raises(ValueError, match="last turn"):
    search(env, [agent_last], cfg)
  with pytest.raises(ValueError, match="no roots"):
    search(env, [], cfg)
  with pytest.raises(ValueError, match="problem_type"):
    run_search(env, [missing], cfg, str(tmp_path / "out"), progress=False)
  assert not (tmp_path / "out").exists()
  assert env.expand_calls == 0 and env.rollout_calls == 0


def test_p4g_root_with_empty_turns_is_fine():
  env = _env()
  root = Dialogue("p", "p4g", [], {"persona": "student, 22"})
  t = search(env, [root], SearchConfig(budget=2, max_turns=6, prune_similarity=None))
  assert int(t.expansions[0]) == 2


def test_config_from_launcher_section():
  from engage_jax.sampling import SamplingParams
  from engage_jax.search import config_from_section
  section = {"n_conditions": 48, "trees_per_shard": 16, "k": 3, "budget": 8, "max_depth": 3,
             "max_turns": 4, "selection": "uct", "c": 1.0, "margin": 0.2,
             "prune_similarity": 0.95, "max_live": 0,
             "agent_sampling": {"max_new_tokens": 32, "temperature": 0.9, "top_p": 0.9, "top_k": 0},
             "simulator_sampling": {"max_new_tokens": 32, "temperature": 0.3, "top_p": 1.0, "top_k": 0},
             "max_prompt_len": 256}
  cfg = config_from_section(section, seed=3)
  assert cfg.budget == 8 and cfg.max_turns == 4 and cfg.seed == 3
  assert cfg.agent_sampling == SamplingParams(max_new_tokens=32, temperature=0.9, top_p=0.9)
  assert cfg.simulator_sampling == SamplingParams(max_new_tokens=32, temperature=0.3)
  with pytest.raises(ValueError, match="budgett"):
    SearchConfig.from_dict({"budgett": 3})
  with pytest.raises(ValueError, match="n_conditions"):   # runner keys are not the algorithm's
    SearchConfig.from_dict(section)
  with pytest.raises(ValueError, match="temprature"):
    SearchConfig.from_dict({"agent_sampling": {"temprature": 0.5}})
