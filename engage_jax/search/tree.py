"""A batch of i×MCTS trees as a struct of numpy arrays (host side; the models run on device).

Layout follows mctx (`mctx/_src/tree.py`): B trees, each with a preallocated capacity of N nodes
and at most K children per node. Node `ROOT_INDEX` (0) of tree b is the root: the condition plus
the opening turns (`roots[b]`). Every other node is one agent response plus the simulator's reply.

Array fields (numpy, one row per tree):
  parent     [B, N] int32    parent node index, NO_PARENT for the root and unused slots.
  action     [B, N] int32    index of the node among its parent's children (-1 for the root).
  depth      [B, N] int32    number of search steps (agent turns) below the root; root = 0.
  visits     [B, N] int32    number of rollout rewards backed up through the node.
  value_sum  [B, N] float64  sum of those rewards; value = value_sum / visits (mean backup).
  terminal   [B, N] bool     the simulator ended the chat in this node's user reply.
  truncated  [B, N] bool     the conversation reached the turn cap at this node (not terminal).
  reward     [B, N] float64  the node's own reward (terminal: from the chat's end; otherwise the
                             first rollout's reward); NaN where none.
  prior      [B, N] float64  the agent's sequence log-prob of the node's agent turn (root: 0).
  expanded   [B, N] bool     children were generated for the node.
  capped     [B, N] bool     closed for expansion by the cap on live trajectories (`max_live`).
  closed     [B, N] bool     no expandable node remains in the node's subtree (terminal,
                             truncated, at the depth cap, capped, or all children closed).
                             Selection never descends into a closed node.
  children   [B, N, K] int32 child node indices, UNVISITED where there is no child.
  num_nodes  [B] int32       number of used node slots per tree.
  expansions [B] int32       number of expanded nodes per tree.

Side tables (python lists indexed [b][node]; None for the root and unused slots):
  agent_turn, user_turn: `Turn`; agent_ids, user_ids: token ids (list[int]; may be empty for
  fake environments).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engage_jax.data.dialogue import Dialogue, Turn

ROOT_INDEX = 0
NO_PARENT = -1
UNVISITED = -1


@dataclasses.dataclass
class Trees:
  """B trees of capacity N with at most K children per node (see the module docstring)."""
  parent: np.ndarray
  action: np.ndarray
  depth: np.ndarray
  visits: np.ndarray
  value_sum: np.ndarray
  terminal: np.ndarray
  truncated: np.ndarray
  reward: np.ndarray
  prior: np.ndarray
  expanded: np.ndarray
  capped: np.ndarray
  closed: np.ndarray
  children: np.ndarray
  num_nodes: np.ndarray
  expansions: np.ndarray
  roots: list[Dialogue]
  agent_turn: list[list[Turn | None]]
  user_turn: list[list[Turn | None]]
  agent_ids: list[list[list[int] | None]]
  user_ids: list[list[list[int] | None]]

  @property
  def batch_size(self) -> int:
    return self.parent.shape[0]

  @property
  def capacity(self) -> int:
    return self.parent.shape[1]

  @property
  def max_children(self) -> int:
    return self.children.shape[2]

  def value(self) -> np.ndarray:
    """Mean backed-up value per node, [B, N] float64; NaN where visits == 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(self.visits > 0, self.value_sum / np.maximum(self.visits, 1), np.nan)

  def child_indices(self, b: int, node: int) -> list[int]:
    """Used child slots of `node` in tree b, in generation order."""
    return [int(c) for c in self.children[b, node] if c != UNVISITED]

  def path_to_root(self, b: int, node: int) -> list[int]:
    """Node indices from `node` up to and including the root: [node, parent, ..., ROOT_INDEX]."""
    if not 0 <= node < int(self.num_nodes[b]):
      raise ValueError(f"tree {b}: node {node} is not in use (num_nodes={int(self.num_nodes[b])})")
    path = [node]
    while self.parent[b, path[-1]] != NO_PARENT:
      path.append(int(self.parent[b, path[-1]]))
    return path

  def history(self, b: int, node: int) -> Dialogue:
    """The conversation at `node`: the root's turns, then agent turn + user reply per step."""
    root = self.roots[b]
    turns = list(root.turns)
    for n in reversed(self.path_to_root(b, node)[:-1]):
      turns.append(self.agent_turn[b][n])
      turns.append(self.user_turn[b][n])
    return Dialogue(id=root.id, task=root.task, turns=turns, condition=dict(root.condition),
                    outcome={})

  def add_children(self, b: int, node: int, agent_turns: Sequence[Turn],
                   user_turns: Sequence[Turn], priors: Sequence[float],
                   terminal: Sequence[bool], truncated: Sequence[bool],
                   agent_ids: Sequence[list[int]] | None = None,
                   user_ids: Sequence[list[int]] | None = None) -> list[int]:
    """Appends len(agent_turns) <= K children to `node` of tree b and marks it expanded.

    Returns the new node indices. Raises ValueError when `node` is already expanded, is not in
    use, or the tree's capacity N would be exceeded.
    """
    m = len(agent_turns)
    if not 0 < m <= self.max_children:
      raise ValueError(f"tree {b}: {m} children for node {node}; expected 1..{self.max_children}")
    if self.expanded[b, node]:
      raise ValueError(f"tree {b}: node {node} is already expanded")
    start = int(self.num_nodes[b])
    if node >= start:
      raise ValueError(f"tree {b}: node {node} is not in use (num_nodes={start})")
    if start + m > self.capacity:
      raise ValueError(f"tree {b}: capacity {self.capacity} exceeded adding {m} children")
    new = list(range(start, start + m))
    for j, n in enumerate(new):
      self.parent[b, n] = node
      self.action[b, n] = j
      self.depth[b, n] = self.depth[b, node] + 1
      self.prior[b, n] = priors[j]
      self.terminal[b, n] = bool(terminal[j])
      self.truncated[b, n] = bool(truncated[j]) and not bool(terminal[j])
      self.children[b, node, j] = n
      self.agent_turn[b][n] = agent_turns[j]
      self.user_turn[b][n] = user_turns[j]
      self.agent_ids[b][n] = list(agent_ids[j]) if agent_ids is not None else []
      self.user_ids[b][n] = list(user_ids[j]) if user_ids is not None else []
    self.expanded[b, node] = True
    self.num_nodes[b] = start + m
    self.expansions[b] += 1
    return new

  def backup(self, b: int, node: int, reward: float) -> None:
    """Adds one visit with `reward` to `node` and every ancestor (mean backup)."""
    for n in self.path_to_root(b, node):
      self.visits[b, n] += 1
      self.value_sum[b, n] += reward

  def stats(self, b: int) -> dict:
    """JSON-able per-tree statistics (used nodes only), with each node's agent/user texts."""
    n = int(self.num_nodes[b])
    value = self.value()[b, :n]
    return {
        "root_id": self.roots[b].id,
        "num_nodes": n,
        "expansions": int(self.expansions[b]),
        "parent": self.parent[b, :n].tolist(),
        "depth": self.depth[b, :n].tolist(),
        "visits": self.visits[b, :n].tolist(),
        "value": [None if np.isnan(v) else float(v) for v in value],
        "terminal": self.terminal[b, :n].tolist(),
        "truncated": self.truncated[b, :n].tolist(),
        "max_depth": int(self.depth[b, :n].max()),
        # texts (None at the root): with parent and value they rebuild every node's prompt and
        # reply, e.g. the KTO rows of engage_jax/pairs_dataset.py
        "root": self.roots[b].to_json(),
        "agent_text": [t.text if t is not None else None for t in self.agent_turn[b][:n]],
        "agent_strategy": [t.strategy if t is not None else None for t in self.agent_turn[b][:n]],
        "user_text": [t.text if t is not None else None for t in self.user_turn[b][:n]],
    }


def init_trees(roots: Sequence[Dialogue], capacity: int, max_children: int) -> Trees:
  """B = len(roots) empty trees holding only their roots; N = capacity, K = max_children."""
  b, n, k = len(roots), capacity, max_children
  if b == 0 or n < 1 or k < 1:
    raise ValueError(f"init_trees: need roots, capacity >= 1, max_children >= 1; got B={b}, "
                     f"N={n}, K={k}")

  def side():
    return [[None] * n for _ in range(b)]

  return Trees(
      parent=np.full((b, n), NO_PARENT, np.int32),
      action=np.full((b, n), -1, np.int32),
      depth=np.zeros((b, n), np.int32),
      visits=np.zeros((b, n), np.int32),
      value_sum=np.zeros((b, n), np.float64),
      terminal=np.zeros((b, n), bool),
      truncated=np.zeros((b, n), bool),
      reward=np.full((b, n), np.nan, np.float64),
      prior=np.zeros((b, n), np.float64),
      expanded=np.zeros((b, n), bool),
      capped=np.zeros((b, n), bool),
      closed=np.zeros((b, n), bool),
      children=np.full((b, n, k), UNVISITED, np.int32),
      num_nodes=np.ones((b,), np.int32),
      expansions=np.zeros((b,), np.int32),
      roots=list(roots),
      agent_turn=side(), user_turn=side(), agent_ids=side(), user_ids=side(),
  )
