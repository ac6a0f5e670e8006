"""i×MCTS over simulated conversations (tree, search, pairs, envs, resumable runner).

Public API:
  SearchConfig, search, validate                      (imcts.py)
  Trees, init_trees, ROOT_INDEX, NO_PARENT, UNVISITED (tree.py)
  Env, Expansion, RolloutResult, ModelEnv, SequentialEnv, BanditEnv (env.py)
  extract_pairs, tree_pairs, write_jsonl, read_jsonl  (pairs.py)
  run_search, load_pairs, shard_seed                  (run.py)
Nothing here imports jax at import time (ModelEnv imports the model stack lazily).
"""
from engage_jax.search.env import (BanditEnv, Env, Expansion, ModelEnv, RolloutResult,
                                   SequentialEnv)
from engage_jax.search.imcts import RoundInfo, SearchConfig, search, validate
from engage_jax.search.pairs import extract_pairs, read_jsonl, tree_pairs, write_jsonl
from engage_jax.search.run import load_pairs, run_search, shard_seed
from engage_jax.search.tree import NO_PARENT, ROOT_INDEX, UNVISITED, Trees, init_trees

__all__ = [
    "BanditEnv", "Env", "Expansion", "ModelEnv", "RolloutResult", "SequentialEnv", "RoundInfo",
    "SearchConfig", "search", "validate", "extract_pairs", "read_jsonl", "tree_pairs",
    "write_jsonl", "load_pairs", "run_search", "shard_seed", "NO_PARENT", "ROOT_INDEX",
    "UNVISITED", "Trees", "init_trees",
]
