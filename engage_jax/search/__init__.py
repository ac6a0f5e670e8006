"""i×MCTS over simulated conversations (tree, search, pairs, envs, resumable runner).

Public API:
  SearchConfig, search, validate, RoundInfo           (imcts.py: the algorithm)
  uct_scores, puct_scores, SELECTION_RULES            (selection.py: child scores, descent)
  similarity, prune_duplicates                        (similarity.py: sibling pruning)
  Trees, init_trees, ROOT_INDEX, NO_PARENT, UNVISITED (tree.py: the arrays)
  Env, Expansion, RolloutResult, UNPARSED             (base.py: the env protocol and records)
  ModelEnv                                            (env.py: the agent + simulator LMs)
  extract_pairs, tree_pairs, write_jsonl, read_jsonl  (pairs.py)
  run_search, read_search_pairs, config_from_section, RUNNER_KEYS (run.py)
Test doubles (BanditEnv, SequentialEnv) are in engage_jax.search.testing, not exported here.
ModelEnv imports the model stack lazily; SearchConfig's SamplingParams comes from
engage_jax.sampling (which imports jax).
"""
from engage_jax.search.base import UNPARSED, Env, Expansion, RolloutResult
from engage_jax.search.env import ModelEnv
from engage_jax.search.imcts import RoundInfo, SearchConfig, search, validate
from engage_jax.search.pairs import extract_pairs, read_jsonl, tree_pairs, write_jsonl
from engage_jax.search.run import RUNNER_KEYS, config_from_section, read_search_pairs, run_search
from engage_jax.search.selection import SELECTION_RULES, puct_scores, uct_scores
from engage_jax.search.similarity import prune_duplicates, similarity
from engage_jax.search.tree import NO_PARENT, ROOT_INDEX, UNVISITED, Trees, init_trees

__all__ = [
    "UNPARSED", "Env", "Expansion", "RolloutResult", "ModelEnv", "RoundInfo", "SearchConfig",
    "search", "validate", "extract_pairs", "read_jsonl", "tree_pairs", "write_jsonl",
    "RUNNER_KEYS", "config_from_section", "read_search_pairs", "run_search",
    "SELECTION_RULES", "puct_scores", "uct_scores", "prune_duplicates", "similarity",
    "NO_PARENT", "ROOT_INDEX", "UNVISITED", "Trees", "init_trees",
]
