"""Test doubles of the search `Env` (tests, docs, benchmarks); no models.

- `BanditEnv`: a model-free env whose agent candidates are arms with known success probabilities.
- `SequentialEnv`: wraps any env and serves one history at a time (the straightforward
  implementation; the baseline of benchmarks/search_batched_vs_sequential.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.search.base import Env, Expansion, RolloutResult, row_seeds


class SequentialEnv:
  """Serves histories one at a time through `inner` (the non-batched baseline).

  expand: one `inner.expand([h], k, [seed of h])` call per history (k candidates of one leaf
  together); rollout: one `inner.rollout([h], [seed of h])` call per history (so an env whose rows
  depend only on their seeds gives the same results as when batched).
  """

  def __init__(self, inner: Env):
    self.inner = inner

  def __getattr__(self, name):  # expose e.g. max_turns of the wrapped env
    return getattr(self.inner, name)

  def expand(self, histories: list[Dialogue], k: int, seed) -> list[list[Expansion]]:
    seeds = row_seeds(seed, len(histories))
    return [self.inner.expand([h], k, [s])[0] for h, s in zip(histories, seeds)]

  def rollout(self, histories: list[Dialogue], seed) -> list[RolloutResult]:
    seeds = row_seeds(seed, len(histories))
    return [self.inner.rollout([h], [s])[0] for h, s in zip(histories, seeds)]


class BanditEnv:
  """A model-free env: agent candidates are arms with known success probabilities.

  Each expansion draws k arms (without replacement while k <= number of arms). The success
  probability of a conversation is the mean of `arms[a]` over the agent turns it holds (those of
  the root included only when they carry a known strategy; 0.5 when none). The simulator's reply
  ends the chat with probability `p_end` (reward then drawn at once, Expansion.reward set); a
  rollout plays strategy-less filler turns (which do not change the success probability) until
  the turn cap or an end and returns Bernoulli(success probability). So the expected value of a
  node is the mean of the arm probabilities on its path: the best path repeats the best arm.

  bernoulli=False: rewards are the success probabilities themselves (noise-free tests).
  Each history's draws come from its own seed (`base.row_seeds`), never from its place in the call.
  agent texts: `texts[arm]` if given (a list cycled by draw) else "<arm> #<n>"; strategy = arm.
  """

  def __init__(self, arms: Mapping[str, float], *, max_turns: int = 6, p_end: float = 0.0,
               texts: Mapping[str, Sequence[str]] | None = None, bernoulli: bool = True):
    if not arms:
      raise ValueError("BanditEnv: no arms")
    self.arms = dict(arms)
    self.names = list(self.arms)
    self.max_turns = max_turns
    self.p_end = p_end
    self.bernoulli = bernoulli
    self.texts = {a: list(t) for a, t in (texts or {}).items()}
    self.expand_calls = 0
    self.rollout_calls = 0

  def success_prob(self, turns: Sequence[Turn]) -> float:
    ps = [self.arms[t.strategy] for t in turns if t.role == AGENT and t.strategy in self.arms]
    return float(np.mean(ps)) if ps else 0.5

  def _reward(self, p: float, rng: np.random.Generator) -> float:
    return float(rng.random() < p) if self.bernoulli else p

  def _text(self, arm: str, rng: np.random.Generator) -> str:
    n = int(rng.integers(1_000_000))
    if self.texts.get(arm):
      return self.texts[arm][n % len(self.texts[arm])]
    return f"{arm} #{n}"

  def expand(self, histories: list[Dialogue], k: int, seed) -> list[list[Expansion]]:
    self.expand_calls += 1
    out = []
    for h, s in zip(histories, row_seeds(seed, len(histories))):
      rng = np.random.default_rng([s & 0xFFFFFFFF])
      replace = k > len(self.names)
      picks = rng.choice(len(self.names), size=k, replace=replace)
      row = []
      for a in picks:
        arm = self.names[int(a)]
        agent = Turn(AGENT, self._text(arm, rng), strategy=arm)
        terminal = bool(rng.random() < self.p_end)
        reward = None
        if terminal:
          p = self.success_prob(list(h.turns) + [agent])
          reward = self._reward(p, rng)
        user = Turn(USER, "[END]" if terminal else "ok")
        row.append(Expansion(agent=agent, user=user, agent_logprob=float(np.log(1.0 / len(self.names))),
                             terminal=terminal, reward=reward))
      out.append(row)
    return out

  def rollout(self, histories: list[Dialogue], seed) -> list[RolloutResult]:
    self.rollout_calls += 1
    out = []
    for h, s in zip(histories, row_seeds(seed, len(histories))):
      rng = np.random.default_rng([s & 0xFFFFFFFF, 1])
      turns = list(h.turns)
      n, terminal = 0, False
      while sum(t.role == AGENT for t in turns) < self.max_turns:
        turns += [Turn(AGENT, "filler"), Turn(USER, "ok")]
        n += 1
        if rng.random() < self.p_end:
          terminal = True
          break
      reward = self._reward(self.success_prob(turns), rng)
      out.append(RolloutResult(reward=reward, num_turns=n, terminal=terminal))
    return out
