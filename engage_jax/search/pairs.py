"""Stepwise preference pairs from i×MCTS trees, in TRL's conversational format.

At every expanded node, every ordered pair of children (a, b) whose mean values differ by at least
`margin` (value(a) - value(b) >= margin and value(a) > value(b)) gives one pair: all of them are
kept (the paper keeps all stepwise pairs). One JSON object per pair (docs/CONTRACTS.md):

  {"prompt":   [{"role": "system"|"user"|"assistant", "content": str}, ...],  # agent's view
   "chosen":   [{"role": "assistant", "content": <agent turn of a>}],
   "rejected": [{"role": "assistant", "content": <agent turn of b>}],
   "meta": {"tree_id", "condition_id", "task", "node", "depth", "chosen_node", "rejected_node",
            "chosen_value", "rejected_value", "chosen_visits", "rejected_visits", "margin",
            "chosen_strategy", "rejected_strategy"}}

`depth` is the depth of the parent node (search steps before the choice); `margin` is the actual
value difference. Pairs with the same prompt + chosen + rejected text are deduplicated.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from engage_jax.data import chat
from engage_jax.data.dialogue import Turn
from engage_jax.fileio import atomic_write_jsonl as write_jsonl  # noqa: F401 (re-exported API)
from engage_jax.fileio import atomic_write_text, read_jsonl  # noqa: F401 (re-exported API)
from engage_jax.search.tree import Trees


def agent_messages(task: str, turns: Sequence[Turn]) -> list[dict]:
  """The agent's view of a history (`engage_jax.data.chat.agent_messages`)."""
  return list(chat.agent_messages(task, list(turns)))


def pair_key(pair: dict) -> str:
  """Dedup key: prompt + chosen + rejected text."""
  return json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True,
                    ensure_ascii=False)


def tree_pairs(trees: Trees, b: int, margin: float, min_visits: int = 1,
               tree_id: int | str | None = None) -> list[dict]:
  """All stepwise pairs of tree b (not deduplicated), in node order then child order."""
  root = trees.roots[b]
  value = trees.value()[b]
  out = []
  for node in range(int(trees.num_nodes[b])):
    if not trees.expanded[b, node]:
      continue
    kids = [c for c in trees.child_indices(b, node) if trees.visits[b, c] >= min_visits]
    if len(kids) < 2:
      continue
    prompt = None
    for a in kids:
      for r in kids:
        diff = float(value[a] - value[r])
        if a == r or diff <= 0 or diff < margin:
          continue
        if prompt is None:
          prompt = agent_messages(root.task, trees.history(b, node).turns)
        ta, tr = trees.agent_turn[b][a], trees.agent_turn[b][r]
        out.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": ta.text}],
            "rejected": [{"role": "assistant", "content": tr.text}],
            "meta": {
                "tree_id": b if tree_id is None else tree_id,
                "condition_id": root.id,
                "task": root.task,
                "node": node,
                "depth": int(trees.depth[b, node]),
                "chosen_node": a,
                "rejected_node": r,
                "chosen_value": float(value[a]),
                "rejected_value": float(value[r]),
                "chosen_visits": int(trees.visits[b, a]),
                "rejected_visits": int(trees.visits[b, r]),
                "margin": diff,
                "chosen_strategy": ta.strategy,
                "rejected_strategy": tr.strategy,
            },
        })
  return out


def extract_pairs(trees: Trees, margin: float, min_visits: int = 1,
                  tree_ids: Sequence[int | str] | None = None,
                  seen: set[str] | None = None) -> list[dict]:
  """Pairs of all B trees, deduplicated (also against `seen`, which is updated in place)."""
  seen = set() if seen is None else seen
  out = []
  for b in range(trees.batch_size):
    tid = tree_ids[b] if tree_ids is not None else b
    for p in tree_pairs(trees, b, margin, min_visits, tid):
      key = pair_key(p)
      if key not in seen:
        seen.add(key)
        out.append(p)
  return out
