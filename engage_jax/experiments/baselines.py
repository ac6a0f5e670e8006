"""Baselines next to i×MCTS + DPO: best-of-N decoding, corpus preference pairs, rejection-sampling
fine-tuning data.

- `BestOfN(agent, lookahead, n, ...)`: at each agent turn, n candidates (one batched agent call
  over all rows x n), each valued by ONE simulated rollout with the `lookahead` simulator to the
  chat's end (`rollout.simulate`, one batched call per role per turn); the best-valued candidate is
  kept (first on ties; unparsed P4G outcomes rank last). `simulate_best_of_n` is
  `rollout.simulate` with that agent (the user's real reply comes from the evaluation simulator with
  its own seeds, never from the lookahead). `agent_samples` counts every agent sample drawn
  (candidates + rollout turns): the sampling budget, reported per conversation.
- `corpus_pairs(task, dialogues, agent, limit, seed)`: chosen = a corpus agent turn of a successful
  training dialogue (ES: the turn the seeker answered with engagement; P4G: every persuasion turn of
  a chat that donated >= $1), rejected = the SFT agent's sample on the same prompt (dropped when
  identical); the pair format of docs/CONTRACTS.md with meta.source = "corpus".
- `rft_examples(pairs, min_value)`: (prompt messages + chosen) of search pairs whose chosen child's
  value is >= min_value, deduplicated: the search's best steps as SFT data.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Sequence

import numpy as np

from engage_jax import rollout
from engage_jax.data import chat
from engage_jax.data.dialogue import AGENT, Dialogue, Turn
from engage_jax.seeding import sub_seed


@dataclasses.dataclass
class BestOfN:
  """Best-of-n agent over `agent` (rollout.Speaker) valued by `lookahead` (rollout.Speaker)."""
  agent: Any
  lookahead: Any
  n: int
  task: str
  max_agent_turns: int
  reward_cfg: Any = None
  agent_samples: int = 0
  calls: int = 0

  def __post_init__(self):
    if self.n < 1:
      raise ValueError(f"BestOfN: n must be >= 1; got {self.n}")

  def choose(self, histories: Sequence[Dialogue], seed: int) -> list[str]:
    """The kept agent text for each history (its condition is the lookahead's user)."""
    self.calls += 1
    msgs = [chat.agent_messages(self.task, h.turns) for h in histories for _ in range(self.n)]
    cands = self.agent.generate(msgs, sub_seed(seed, self.calls, 0))
    looks = [Dialogue(h.id, self.task, list(h.turns) + [Turn(AGENT, c)], dict(h.condition))
             for h, c in zip((h for h in histories for _ in range(self.n)), cands)]
    done = rollout.simulate(self.agent, self.lookahead, looks, task=self.task,
                            max_agent_turns=self.max_agent_turns, reward_cfg=self.reward_cfg,
                            seed=sub_seed(seed, self.calls, 1))
    self.agent_samples += len(cands) + sum(d.num_agent_turns - lk.num_agent_turns for d, lk in zip(done, looks))
    out = []
    for i in range(len(histories)):
      vals = []
      for d in done[i * self.n:(i + 1) * self.n]:
        r = d.outcome.get("reward")
        unparsed = "donation" in d.outcome and d.outcome["donation"] is None
        vals.append(-math.inf if unparsed or r is None else float(r))
      out.append(cands[i * self.n + int(np.argmax(vals))])
    return out


_ROLE_KEY = {"agent": 2, "simulator": 3, "outcome": 4}  # the per-role seed keys of best-of-n chats


def simulate_best_of_n(policy: BestOfN, simulator, starts: list[Dialogue], *, task: str,
                       max_agent_turns: int, reward_cfg: Any = None, seed: int = 0, **_) -> list[Dialogue]:
  """`rollout.simulate` with the best-of-n agent (`policy.choose` makes the agent turns; same end
  rules and scoring); outcome gains `agent_samples` (per conversation). The signature of
  evaluate.evaluate's simulate_fn with `policy` in the agent's place."""
  before = policy.agent_samples
  rows = rollout.simulate(policy.agent, simulator, starts, task=task, max_agent_turns=max_agent_turns,
                          reward_cfg=reward_cfg, seed=seed, agent_turns=policy.choose,
                          call_seed=lambda call, role: sub_seed(seed, call, _ROLE_KEY[role]))
  per = (policy.agent_samples - before) / max(len(rows), 1)
  for d in rows:
    d.outcome["agent_samples"] = per
  return rows


def corpus_prompts(task: str, dialogues: Sequence[Dialogue]) -> list[tuple[list[Turn], Turn, str]]:
  """(history, chosen corpus agent turn, dialogue id) of the successful corpus dialogues."""
  out = []
  for d in dialogues:
    agent_idx = [i for i, t in enumerate(d.turns) if t.role == AGENT]
    if task == "es":
      if not d.outcome.get("engaged") or not agent_idx:
        continue
      picks = agent_idx[-1:]
    else:
      if float(d.outcome.get("donation") or 0.0) < 1.0:
        continue
      picks = [i for i in agent_idx if d.turns[i].strategy != "Greeting"]
    out += [(list(d.turns[:i]), d.turns[i], d.id) for i in picks]
  return out


def corpus_pairs(task: str, dialogues: Sequence[Dialogue], agent, limit: int, seed: int) -> list[dict]:
  """Up to `limit` corpus pairs (chosen = corpus turn, rejected = the agent's sample), in a seeded
  order; one batched agent call."""
  items = corpus_prompts(task, dialogues)
  order = np.random.default_rng(seed).permutation(len(items))[:max(limit, 0)]
  items = [items[i] for i in order]
  if not items:
    return []
  samples = agent.generate([chat.agent_messages(task, h) for h, _, _ in items], sub_seed(seed, 5))
  out = []
  for (hist, chosen, did), rej in zip(items, samples):
    if " ".join(rej.split()) == " ".join(chosen.text.split()):
      continue
    out.append({"prompt": chat.agent_messages(task, hist),
                "chosen": [{"role": "assistant", "content": chosen.text}],
                "rejected": [{"role": "assistant", "content": rej}],
                "meta": {"source": "corpus", "dialogue_id": did, "task": task,
                         "chosen_strategy": chosen.strategy}})
  return out


def rft_examples(pairs: Sequence[dict], min_value: float) -> list[list[dict]]:
  """Message lists (prompt + chosen) of the pairs whose meta.chosen_value >= min_value, unique."""
  seen, out = set(), []
  for p in pairs:
    if float(p["meta"].get("chosen_value", -math.inf)) < min_value:
      continue
    msgs = list(p["prompt"]) + list(p["chosen"])
    key = repr([(m["role"], m["content"]) for m in msgs])
    if key not in seen:
      seen.add(key)
      out.append(msgs)
  return out
