"""The interface between i×MCTS and the models.

An `Env` turns a frontier of conversations into candidate children (`expand`) and estimates the
value of conversations by simulating them to the end (`rollout`). Search calls each method ONCE
per round over the whole frontier of all trees, so a model-backed env can serve a round with one
batched sampling call per role.

- `ModelEnv`: the real agent and user-simulator LMs (`engage_jax.sampling`, `engage_jax.rollout`).
- `SequentialEnv`: wraps any env and serves one history at a time (the straightforward
  implementation; the baseline of benchmarks/search_batched_vs_sequential.py).
- `BanditEnv`: a model-free stand-in whose agent candidates are arms with known success
  probabilities (tests, docs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.seeding import sub_seed

UNPARSED = float("nan")  # the reward of a chat whose P4G outcome line gave no donation


def _scored_reward(outcome: Mapping) -> float:
  """outcome["reward"], or UNPARSED when a P4G outcome was asked for and did not parse."""
  return UNPARSED if "donation" in outcome and outcome["donation"] is None else float(outcome["reward"])


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


class Env(Protocol):
  """What i×MCTS needs from the models. Both methods are deterministic given `seed`."""

  def expand(self, histories: list[Dialogue], k: int, seed: int) -> list[list[Expansion]]:
    """k candidate children per history: result[i] has length k (order = generation order)."""
    ...

  def rollout(self, histories: list[Dialogue], seed: int) -> list[RolloutResult]:
    """One simulated continuation to a terminal (or the turn cap) per history."""
    ...


class SequentialEnv:
  """Serves histories one at a time through `inner` (the non-batched baseline).

  expand: one `inner.expand([h], k, ...)` call per history (k candidates of one leaf together);
  rollout: one `inner.rollout([h], ...)` call per history.
  """

  def __init__(self, inner: Env):
    self.inner = inner

  def __getattr__(self, name):  # expose e.g. max_turns of the wrapped env
    return getattr(self.inner, name)

  def expand(self, histories: list[Dialogue], k: int, seed: int) -> list[list[Expansion]]:
    return [self.inner.expand([h], k, sub_seed(seed, i))[0] for i, h in enumerate(histories)]

  def rollout(self, histories: list[Dialogue], seed: int) -> list[RolloutResult]:
    return [self.inner.rollout([h], sub_seed(seed, i))[0] for i, h in enumerate(histories)]


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
    if arm in self.texts and self.texts[arm]:
      return self.texts[arm][n % len(self.texts[arm])]
    return f"{arm} #{n}"

  def expand(self, histories: list[Dialogue], k: int, seed: int) -> list[list[Expansion]]:
    self.expand_calls += 1
    out = []
    for i, h in enumerate(histories):
      rng = np.random.default_rng([seed & 0xFFFFFFFF, i])
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

  def rollout(self, histories: list[Dialogue], seed: int) -> list[RolloutResult]:
    self.rollout_calls += 1
    out = []
    for i, h in enumerate(histories):
      rng = np.random.default_rng([seed & 0xFFFFFFFF, i, 1])
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


def turn_reward(task: str, e: Expansion, reward_cfg: Any = None) -> float:
  """The user's immediate reaction to `e.agent` (SearchConfig.reward_horizon "turn"): ES 1.0 if
  the reply `e.user` alone matches the regex; P4G the donation that reply states (free text,
  0.0 if none), or the chat's outcome `e.reward` when the reply ended it (UNPARSED stays NaN)."""
  from engage_jax import rewards
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

  agent, simulator: `engage_jax.rollout.Speaker`s (model, tokenizer, lengths, sampling params).
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
                  max_prompt_len: int = 512, logprobs: bool | None = None,
                  strategy_fn: Callable[[str], str | None] | None = None) -> "ModelEnv":
    """Builds both Speakers from a `SearchConfig` (agent/simulator sampling settings, turn cap)."""
    from engage_jax import rollout
    agent = rollout.Speaker(agent_model, tokenizer, max_prompt_len, cfg.max_new_tokens,
                            cfg.temperature, cfg.top_p, cfg.top_k)
    sim = rollout.Speaker(simulator_model, tokenizer, max_prompt_len, cfg.sim_max_new_tokens,
                          cfg.sim_temperature, cfg.sim_top_p, cfg.sim_top_k)
    if logprobs is None:
      logprobs = cfg.selection == "puct"
    return cls(agent, sim, task=task, reward_cfg=reward_cfg, max_turns=cfg.max_turns,
               logprobs=logprobs, strategy_fn=strategy_fn)

  def _generate(self, speaker, prompts: list[list[int]], seed: int) -> list[list[int]]:
    from engage_jax import sampling
    return sampling.generate(speaker.model, prompts, max_new_tokens=speaker.max_new_tokens,
                             temperature=speaker.temperature, top_p=speaker.top_p,
                             top_k=speaker.top_k, seed=seed,
                             stop_token_ids=speaker.stop_token_ids)

  def expand(self, histories: list[Dialogue], k: int, seed: int) -> list[list[Expansion]]:
    from engage_jax.data import chat
    rows = [(i, h) for i, h in enumerate(histories) for _ in range(k)]
    a_prompts = [self.agent.prompt(chat.agent_messages(h.task, h.turns)) for _, h in rows]
    a_ids = self._generate(self.agent, a_prompts, sub_seed(seed, 0))
    a_texts = [self.tokenizer.decode(ids).strip() for ids in a_ids]
    if self.logprobs:
      from engage_jax.sampling import sequence_logprobs
      a_lp = sequence_logprobs(self.agent.model, a_prompts, a_ids)
    else:
      a_lp = [0.0] * len(rows)
    agent_turns = [Turn(AGENT, t, self.strategy_fn(t) if self.strategy_fn else None)
                   for t in a_texts]
    s_prompts = [self.simulator.prompt(chat.simulator_messages(h.task, h.condition,
                                                               list(h.turns) + [a]))
                 for (_, h), a in zip(rows, agent_turns)]
    s_ids = self._generate(self.simulator, s_prompts, sub_seed(seed, 1))
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
                                  dict(h.condition))))
    if ended:
      rewards = self.final_rewards([d for _, d in ended], sub_seed(seed, 2))
      for (e, _), r in zip(ended, rewards):
        e.reward = r
    return out

  def turn_rewards(self, expansions: Sequence[Expansion]) -> list[float]:
    """`turn_reward` of each new child (reward_horizon "turn")."""
    return [turn_reward(self.task, e, self.reward_cfg) for e in expansions]

  def final_rewards(self, dialogues: list[Dialogue], seed: int) -> list[float]:
    """Rewards of chats the simulator has ended (`rollout.score_finished`, as `simulate` does);
    UNPARSED for a P4G outcome without a donation."""
    from engage_jax import rollout
    return [_scored_reward(x) for x in rollout.score_finished(self.simulator, dialogues, task=self.task,
                                                        reward_cfg=self.reward_cfg, seed=seed)]

  def rollout(self, histories: list[Dialogue], seed: int) -> list[RolloutResult]:
    from engage_jax import rollout
    done = rollout.simulate(self.agent, self.simulator, list(histories), task=self.task,
                            max_agent_turns=self.max_turns, reward_cfg=self.reward_cfg, seed=seed)
    return [RolloutResult(reward=_scored_reward(d.outcome),
                          num_turns=int(d.outcome.get("num_turns", 0)),
                          terminal=bool(d.outcome.get("terminal", False))) for d in done]
