"""The production search env: `ModelEnv`, the agent and user-simulator LMs behind the `Env`
protocol (search/base.py), and `turn_reward`, the immediate reward of a child (reward_horizon
"turn"). Model-free test doubles are in search/testing.py.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable, Mapping, Sequence

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.search.base import UNPARSED, Expansion, RolloutResult, row_seeds
from engage_jax.seeding import sub_seed
from engage_jax import rewards, rollout
from engage_jax.data import chat
from engage_jax.sampling import sequence_logprobs


def _scored_reward(outcome: Mapping) -> float:
  """outcome["reward"], or UNPARSED when a P4G outcome was asked for and did not parse."""
  return UNPARSED if "donation" in outcome and outcome["donation"] is None else float(outcome["reward"])


def turn_reward(task: str, e: Expansion, reward_cfg: Any = None) -> float:
  """The user's immediate reaction to `e.agent` (SearchConfig.reward_horizon "turn"): ES 1.0 if
  the reply `e.user` alone matches the regex; P4G the donation that reply states (free text,
  0.0 if none), or the chat's outcome `e.reward` when the reply ended it (UNPARSED stays NaN)."""
  st = rewards.RewardSettings.from_any(reward_cfg)
  if task == "es":
    return 1.0 if rewards.es_engaged([e.user.text], st.es_pattern, 1) else 0.0
  if e.terminal and e.reward is not None:
    return float(e.reward)
  d = rewards.parse_donation(e.user.text, st.donation_cap, outcome_line=False)
  return 0.0 if d is None else float(d)


class ModelEnv:
  """The real env: agent and user-simulator LMs.

  expand: ONE `sampling.generate` call for the agent over all len(histories) * k prompts (the
  sampler pads the batch to a fixed bucket), an optional batched scoring pass for the agent's
  sequence log-probs (PUCT prior), and ONE `sampling.generate` call for the simulator's replies;
  children the simulator ended get their reward at once (`final_rewards`: ES regex; P4G one more
  batched simulator call for the outcome line). END_MARKER is stripped from stored user turns.
  rollout: `rollout.simulate` over all histories (one batched call per role per turn).
  Seeds are per row (`base.row_seeds`): candidate j of history i samples the agent with
  sub_seed(s_i, 0, j), the simulator with sub_seed(s_i, 1, j) and the outcome with sub_seed(s_i,
  2, j); a rollout row is `simulate`d with row seed s_i. So a row's text does not depend on the
  other rows of the call (up to fp32 rounding of the batch shape).

  agent, simulator: `engage_jax.rollout.Speaker`s (model, tokenizer, prompt length and
    `sampling.SamplingParams`).
  reward_cfg: passed to `rollout.simulate`. max_turns: the conversation's cap in agent turns.
  logprobs: score the agent's candidates (PUCT prior); otherwise agent_logprob = 0.0.
  strategy_fn: labels agent texts with a strategy (e.g. `data.sandbox.strategy_of`), which pairs
    report as meta.chosen_strategy / rejected_strategy.
  """

  def __init__(self, agent: Any, simulator: Any, *, task: str, reward_cfg: Any, max_turns: int,
               logprobs: bool = True, strategy_fn: Callable[[str], str | None] | None = None):
    self.strategy_fn = strategy_fn
    self.agent = agent
    self.simulator = simulator
    self.task = task
    self.reward_cfg = reward_cfg
    self.max_turns = max_turns
    self.logprobs = logprobs
    self.tokenizer = agent.tokenizer

  @classmethod
  def from_config(cls, agent_model, simulator_model, tokenizer, cfg, *, task: str, reward_cfg: Any,
                  max_prompt_len: int = rollout.Speaker.max_prompt_len, logprobs: bool | None = None,
                  strategy_fn: Callable[[str], str | None] | None = None, kv_cache: bool = rollout.Speaker.kv_cache) -> ModelEnv:
    """Builds both Speakers from a `SearchConfig` (agent_sampling / simulator_sampling, turn cap);
    kv_cache: the Speakers keep their chats' KV caches between calls (`rollout.Speaker`)."""
    agent = rollout.Speaker(agent_model, tokenizer, max_prompt_len, sampling=cfg.agent_sampling,
                            kv_cache=kv_cache)
    sim = rollout.Speaker(simulator_model, tokenizer, max_prompt_len, sampling=cfg.simulator_sampling,
                          kv_cache=kv_cache)
    if logprobs is None:
      logprobs = cfg.selection == "puct"
    return cls(agent, sim, task=task, reward_cfg=reward_cfg, max_turns=cfg.max_turns,
               logprobs=logprobs, strategy_fn=strategy_fn)

  def expand(self, histories: list[Dialogue], k: int, seed) -> list[list[Expansion]]:
    seeds = row_seeds(seed, len(histories))
    rows = [(i, h) for i, h in enumerate(histories) for _ in range(k)]
    cand = [(seeds[i], j) for i in range(len(histories)) for j in range(k)]  # (history seed, candidate)
    a_prompts = [self.agent.prompt(chat.agent_messages(h.task, h.turns)) for _, h in rows]
    a_ids = self.agent.generate_ids(a_prompts, 0, [sub_seed(s, 0, j) for s, j in cand])  # [len(rows)] ragged
    a_texts = [self.tokenizer.decode(ids).strip() for ids in a_ids]
    if self.logprobs:
      a_lp = sequence_logprobs(self.agent.model, a_prompts, a_ids)
    else:
      a_lp = [0.0] * len(rows)
    agent_turns = [Turn(AGENT, t, self.strategy_fn(t) if self.strategy_fn else None)
                   for t in a_texts]
    s_prompts = [self.simulator.prompt(chat.simulator_messages(h.task, h.condition,
                                                               list(h.turns) + [a]))
                 for (_, h), a in zip(rows, agent_turns)]
    s_ids = self.simulator.generate_ids(s_prompts, 0, [sub_seed(s, 1, j) for s, j in cand])
    out: list[list[Expansion]] = [[] for _ in histories]
    ended = []
    for r, ((i, h), a) in enumerate(zip(rows, agent_turns)):
      u_text = self.tokenizer.decode(s_ids[r]).strip()
      terminal = chat.END_MARKER in u_text
      if terminal:  # stored without the marker, as rollout.simulate stores it
        u_text = chat.strip_end_marker(u_text)
      e = Expansion(agent=a, user=Turn(USER, u_text), agent_logprob=float(a_lp[r]),
                    agent_ids=list(a_ids[r]), user_ids=list(s_ids[r]), terminal=terminal)
      out[i].append(e)
      if terminal:
        ended.append((e, Dialogue(h.id, h.task, list(h.turns) + [e.agent, e.user],
                                  dict(h.condition)), sub_seed(cand[r][0], 2, cand[r][1])))
    if ended:
      rewards = self.final_rewards([d for _, d, _ in ended], [s for _, _, s in ended])
      for (e, _, _), r in zip(ended, rewards):
        e.reward = r
    return out

  def turn_rewards(self, expansions: Sequence[Expansion]) -> list[float]:
    """`turn_reward` of each new child (reward_horizon "turn")."""
    return [turn_reward(self.task, e, self.reward_cfg) for e in expansions]

  def final_rewards(self, dialogues: list[Dialogue], seed) -> list[float]:
    """Rewards of chats the simulator has ended (`rollout.score_finished`, as `simulate` does);
    UNPARSED for a P4G outcome without a donation. seed: one per dialogue or one int
    (`base.row_seeds`)."""
    seeds = row_seeds(seed, len(dialogues))
    return [_scored_reward(x) for x in rollout.score_finished(self.simulator, dialogues, task=self.task,
                                                        reward_cfg=self.reward_cfg, row_seeds=seeds)]

  def rollout(self, histories: list[Dialogue], seed) -> list[RolloutResult]:
    done = rollout.simulate(self.agent, self.simulator, list(histories), task=self.task,
                            max_agent_turns=self.max_turns, reward_cfg=self.reward_cfg,
                            row_seeds=row_seeds(seed, len(histories)))
    return [RolloutResult(reward=_scored_reward(d.outcome),
                          num_turns=int(d.outcome.get("num_turns", 0)),
                          terminal=bool(d.outcome.get("terminal", False))) for d in done]
