"""Oracle evaluation in the sandbox: the world itself (its known dynamics) as the user.

Every agent turn is mapped to its strategy by `sandbox.strategy_of`; a text that matches no
strategy (None) is unhelpful (ES probability P_BASE, P4G not effective) and counted as "unmatched".

- `transcript_scores(task, dialogues)`: from finished transcripts (e.g. the learned simulator's
  evaluation chats): first-turn helpful rate, unmatched rate, and the exact expected reward of the
  strategies played (`sandbox.expected_reward`; for ES chats the simulator ended early this is a
  lower bound, the later turns were never played).
- `simulate_world(agent, starts, task, seed)` (agent: a rollout.Speaker, or a policy with
  `choose(histories, seed)` such as baselines.BestOfN): live chats with the true user. ES: the agent plays
  up to ES_MAX_TURNS turns; after each the world engages with P_HELP / P_BASE and ends the chat,
  otherwise continues (a goodbye after the last). P4G: ES-like for P4G_STRATEGY_TURNS persuasion
  turns (positive / lukewarm replies by effectiveness), then a donation drawn from
  DONATION_PROBS[k]. The world's coins are drawn from (seed, condition, sample) only, so two agents
  meet the same users (paired). Each chat records `reward` (sampled) and `expected` (exact given
  the agent's strategies: ES 1 - prod(1 - p_t) along the not-yet-engaged path, whose agent turns
  are generated to the cap for that purpose; P4G donation_mean(k)).
- world "delayed" (`sandbox` module doc): DELAYED_TURNS agent turns, always played; replies from
  `sandbox.delayed_reply_pool` (warm / pledge lines for the pleasing strategy); ES's last reply is
  "i feel better" when the world's coin falls under `es_delayed_p`, else a goodbye; P4G's donation
  from DONATION_PROBS[`p4g_delayed_level`]. `expected` is exact (`sandbox.expected_reward`).
- `summarize(dialogues)`: {"n", "reward_mean", "ci95", "expected_mean", "expected_ci95",
  "first_turn_helpful", "unmatched_rate", "mean_turns"}.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engage_jax.data import chat, sandbox
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.evaluate import bootstrap_ci

UNMATCHED = "<unmatched>"


def agent_strategies(task: str, turns: Sequence[Turn]) -> list[str]:
  """Strategies of the agent's non-greeting turns, in order ([T]; UNMATCHED where none matches)."""
  out = []
  for t in turns:
    if t.role != AGENT or (task == "p4g" and t.text.strip() == sandbox.P4G_GREETING):
      continue
    out.append(sandbox.strategy_of(t.text, task) or UNMATCHED)
  return out


def transcript_score(task: str, d: Dialogue, world: str = "default") -> dict:
  """{"expected", "first_helpful", "turns", "unmatched"} of one transcript (see module doc)."""
  strat = agent_strategies(task, d.turns)
  best = sandbox.optimal_strategy(task, d.condition, world)
  return {"expected": sandbox.expected_reward(task, d.condition, strat, world),
          "first_helpful": float(bool(strat) and strat[0] == best),
          "turns": len(strat), "unmatched": sum(s == UNMATCHED for s in strat)}


def transcript_scores(task: str, dialogues: Sequence[Dialogue], world: str = "default") -> dict:
  """Mean transcript scores: {"n", "expected_mean", "first_turn_helpful", "unmatched_rate"}."""
  if not dialogues:
    raise ValueError("oracle.transcript_scores: no dialogues")
  s = [transcript_score(task, d, world) for d in dialogues]
  turns = sum(x["turns"] for x in s)
  return {"n": len(s), "expected_mean": float(np.mean([x["expected"] for x in s])),
          "first_turn_helpful": float(np.mean([x["first_helpful"] for x in s])),
          "unmatched_rate": sum(x["unmatched"] for x in s) / max(turns, 1)}


def _world_rng(seed: int, condition_id: str) -> np.random.Generator:
  key = [int(b) for b in condition_id.encode("utf-8")][:64]
  return np.random.default_rng([seed & 0xFFFFFFFF, 424242, *key])


def simulate_world(agent, starts: Sequence[Dialogue], task: str, seed: int, world: str = "default"
                   ) -> list[Dialogue]:
  """Live chats of `agent` (a rollout.Speaker, or anything with generate(messages, seed) -> texts)
  with the sandbox world as the user; one per start (its id keys the world's coins)."""
  if sandbox.check_world(world) == "delayed":
    return _simulate_delayed(agent, starts, task, seed)
  n_turns = sandbox.ES_MAX_TURNS if task == "es" else sandbox.P4G_STRATEGY_TURNS
  rows = [Dialogue(d.id, task, list(d.turns), dict(d.condition), {}) for d in starts]
  rngs = [_world_rng(seed, d.id) for d in rows]
  coins = [r.random(n_turns) for r in rngs]       # [n_turns] per row: the world's engagement draws
  shadow = [list(d.turns) for d in rows]          # ES: the not-yet-engaged path, to the cap
  strat: list[list[str]] = [[] for _ in rows]
  for t in range(n_turns):
    call_seed = int(seed * 7919 + t) % (2 ** 31)
    if hasattr(agent, "choose"):  # a policy that needs the condition (baselines.BestOfN)
      texts = agent.choose([Dialogue(d.id, task, h, dict(d.condition)) for d, h in zip(rows, shadow)], call_seed)
    else:
      texts = agent.generate([chat.agent_messages(task, h) for h in shadow], call_seed)
    for i, (d, text) in enumerate(zip(rows, texts)):
      s = sandbox.strategy_of(text, task) or UNMATCHED
      strat[i].append(s)
      best = sandbox.optimal_strategy(task, d.condition)
      rng = rngs[i]
      if task == "es":
        adj = sandbox.EMOTION_ADJ[d.condition["emotion_type"]]
        p = sandbox.P_HELP if s == best else sandbox.P_BASE
        cont = sandbox.ES_GOODBYE[rng.integers(len(sandbox.ES_GOODBYE))] if t == n_turns - 1 else \
            sandbox.ES_CONTINUE[rng.integers(len(sandbox.ES_CONTINUE))].format(adj=adj)
        shadow[i] += [Turn(AGENT, text, s), Turn(USER, cont)]
        if d.outcome.get("done"):
          continue
        if coins[i][t] < p:
          d.turns += [Turn(AGENT, text, s), Turn(USER, sandbox.ES_ENGAGED[rng.integers(3)])]
          d.outcome.update(done=True, engaged=True)
        else:
          d.turns += [Turn(AGENT, text, s), Turn(USER, cont)]
      else:
        pool = sandbox.P4G_POSITIVE if s == best else sandbox.P4G_LUKEWARM
        reply = pool[rng.integers(len(pool))]
        if t == n_turns - 1:
          reply = f"{reply} {sandbox.P4G_CLOSING}"
        d.turns += [Turn(AGENT, text, s), Turn(USER, reply)]
        shadow[i] = d.turns
  for i, d in enumerate(rows):
    expected = sandbox.expected_reward(task, d.condition, strat[i])
    best = sandbox.optimal_strategy(task, d.condition)
    if task == "es":
      reward = 1.0 if d.outcome.get("engaged") else 0.0
    else:
      k = sum(s == best for s in strat[i][:n_turns])
      j = int(np.searchsorted(np.cumsum(sandbox.DONATION_PROBS[k]), rngs[i].random(), side="right"))
      reward = float(sandbox.DONATION_VALUES[min(j, len(sandbox.DONATION_VALUES) - 1)])
    d.outcome = {"reward": reward, "expected": float(expected), "num_turns": d.num_agent_turns,
                 "first_helpful": float(strat[i][0] == best), "strategies": strat[i],
                 "unmatched": sum(s == UNMATCHED for s in strat[i])}
  return rows


def _agent_texts(agent, rows: Sequence[Dialogue], task: str, call_seed: int) -> list[str]:
  if hasattr(agent, "choose"):  # a policy that needs the condition (baselines.BestOfN)
    return agent.choose([Dialogue(d.id, task, list(d.turns), dict(d.condition)) for d in rows], call_seed)
  return agent.generate([chat.agent_messages(task, d.turns) for d in rows], call_seed)


def _simulate_delayed(agent, starts: Sequence[Dialogue], task: str, seed: int) -> list[Dialogue]:
  """`simulate_world` in the delayed-effect worlds (module doc): every chat runs DELAYED_TURNS."""
  n_turns = sandbox.DELAYED_TURNS
  rows = [Dialogue(d.id, task, list(d.turns), dict(d.condition), {}) for d in starts]
  rngs = [_world_rng(seed, d.id) for d in rows]
  strat: list[list[str]] = [[] for _ in rows]
  for t in range(n_turns):
    texts = _agent_texts(agent, rows, task, int(seed * 7919 + t) % (2 ** 31))
    for i, (d, text) in enumerate(zip(rows, texts)):
      strat[i].append(sandbox.strategy_of(text, task) or UNMATCHED)
      rng = rngs[i]
      if task == "es" and t == n_turns - 1:
        p = sandbox.es_delayed_p(strat[i])
        pool = sandbox.ES_DELAYED_BETTER if rng.random() < p else sandbox.ES_GOODBYE
        reply = pool[rng.integers(len(pool))]
        d.outcome["engaged"] = pool is sandbox.ES_DELAYED_BETTER
      else:
        pool = sandbox.delayed_reply_pool(task, strat[i])
        reply = pool[rng.integers(len(pool))]
        if task == "es":
          reply = reply.format(adj=sandbox.EMOTION_ADJ[d.condition["emotion_type"]])
        elif t == n_turns - 1:
          reply = f"{reply} {sandbox.P4G_CLOSING}"
      d.turns += [Turn(AGENT, text, strat[i][-1]), Turn(USER, reply)]
  for i, d in enumerate(rows):
    expected = sandbox.expected_reward(task, d.condition, strat[i], "delayed")
    if task == "es":
      reward = 1.0 if d.outcome.get("engaged") else 0.0
    else:
      probs = sandbox.DONATION_PROBS[sandbox.p4g_delayed_level(strat[i])]
      j = int(np.searchsorted(np.cumsum(probs), rngs[i].random(), side="right"))
      reward = float(sandbox.DONATION_VALUES[min(j, len(sandbox.DONATION_VALUES) - 1)])
    best = sandbox.optimal_strategy(task, d.condition, "delayed")
    d.outcome = {"reward": reward, "expected": float(expected), "num_turns": d.num_agent_turns,
                 "first_helpful": float(strat[i][0] == best), "strategies": strat[i],
                 "unmatched": sum(s == UNMATCHED for s in strat[i]),
                 "immediate": [sandbox.immediate_reward(task, strat[i][:k + 1]) for k in range(n_turns)]}
  return rows


def summarize(dialogues: Sequence[Dialogue], seed: int = 0) -> dict:
  """Oracle block of a set of `simulate_world` chats (see module doc)."""
  if not dialogues:
    raise ValueError("oracle.summarize: no dialogues")
  r = np.array([d.outcome["reward"] for d in dialogues])
  e = np.array([d.outcome["expected"] for d in dialogues])
  n_strat = sum(len(d.outcome["strategies"]) for d in dialogues)
  return {"n": int(r.size), "reward_mean": float(r.mean()), "ci95": list(bootstrap_ci(r, seed=seed)),
          "expected_mean": float(e.mean()), "expected_ci95": list(bootstrap_ci(e, seed=seed)),
          "first_turn_helpful": float(np.mean([d.outcome["first_helpful"] for d in dialogues])),
          "unmatched_rate": sum(d.outcome["unmatched"] for d in dialogues) / max(n_strat, 1),
          "mean_turns": float(np.mean([d.outcome["num_turns"] for d in dialogues]))}


def evaluate_world(agent, conditions: Sequence[Dialogue], task: str, samples: int, seed: int,
                   world: str = "default") -> list[Dialogue]:
  """`simulate_world` on every condition `samples` times; ids "<condition id>/s<k>" as in
  `evaluate.evaluate` (outcome["condition_id"] set), so rows pair with the simulator's."""
  out = []
  for k in range(samples):
    starts = [Dialogue(f"{c.id}/s{k}", task, list(c.turns), dict(c.condition)) for c in conditions]
    for c, d in zip(conditions, simulate_world(agent, starts, task, seed * 1000 + k, world)):
      d.outcome["condition_id"] = c.id
      d.outcome["sample"] = k
      out.append(d)
  return out
