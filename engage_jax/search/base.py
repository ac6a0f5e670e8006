"""The boundary between i×MCTS and the models: the `Env` protocol and the records it returns.

An `Env` turns a frontier of conversations into candidate children (`expand`) and estimates the
value of conversations by simulating them to the end (`rollout`). Search calls each method ONCE
per round over the whole frontier of all trees, so a model-backed env can serve a round with one
batched sampling call per role. The production env is `search.env.ModelEnv`; test doubles are in
`search.testing`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from engage_jax.data.dialogue import Dialogue, Turn
from engage_jax.seeding import sub_seed

UNPARSED = float("nan")  # the reward of a chat whose P4G outcome line gave no donation


@dataclasses.dataclass
class Expansion:
  """One candidate child: an agent turn and the simulator's reply to it.

  agent_logprob: the agent's sequence log-prob of `agent` (PUCT prior; 0.0 when unknown).
  agent_ids, user_ids: generated token ids (may be empty for fake envs).
  terminal: the simulator ended the chat in `user`.
  reward: the final reward when terminal and already known; None otherwise (search then asks
    `rollout` for it in the round's single rollout call); NaN (`UNPARSED`) when the chat ended
    but its P4G outcome gave no donation: no value, counted apart, never $0.
  """
  agent: Turn
  user: Turn
  agent_logprob: float = 0.0
  agent_ids: list[int] = dataclasses.field(default_factory=list)
  user_ids: list[int] = dataclasses.field(default_factory=list)
  terminal: bool = False
  reward: float | None = None


@dataclasses.dataclass
class RolloutResult:
  """Outcome of simulating a conversation to its end (END marker or the turn cap).
  reward: NaN (`UNPARSED`) when the P4G outcome gave no donation (search backs up nothing)."""
  reward: float
  num_turns: int
  terminal: bool


def row_seeds(seed: int | Sequence[int], n: int) -> list[int]:
  """The per-history seeds of an env call over n histories: `seed` itself when it is a sequence
  (one seed per history; its length is checked), else `sub_seed(seed, i)` for history i."""
  if hasattr(seed, "__index__"):  # int or numpy integer
    return [sub_seed(int(seed), i) for i in range(n)]
  seeds = [int(x) for x in seed]
  if len(seeds) != n:
    raise ValueError(f"env: {len(seeds)} seeds for {n} histories")
  return seeds


class Env(Protocol):
  """What i×MCTS needs from the models. Both methods are deterministic given `seed`.
  `seed` is one int per history (search passes `imcts.node_seed` of each row) or a single int
  (`row_seeds`: history i then gets `sub_seed(seed, i)`). A row's result should depend only on
  its history and its own seed, not on the other rows of the call: then the search's trees do
  not depend on how trees are packed into calls (ModelEnv and BanditEnv do this).
  An env used with SearchConfig.reward_horizon "turn" also has
  `turn_rewards(expansions) -> list[float]` (one immediate reward per new child)."""

  def expand(self, histories: list[Dialogue], k: int, seed: int | Sequence[int]) -> list[list[Expansion]]:
    """k candidate children per history: result[i] has length k (order = generation order)."""
    ...

  def rollout(self, histories: list[Dialogue], seed: int | Sequence[int]) -> list[RolloutResult]:
    """One simulated continuation to a terminal (or the turn cap) per history."""
    ...
