"""Batched simulated conversations between the agent LM and the user-simulator LM.

    agent = Speaker(agent_model, tok, max_prompt_len=512,
                    sampling=SamplingParams(max_new_tokens=64, temperature=0.9, top_p=0.9))
    sim = Speaker(sim_model, tok, max_prompt_len=512,
                  sampling=SamplingParams(max_new_tokens=64, temperature=0.3))
    done = simulate(agent, sim, starts, task="es", max_agent_turns=8, reward_cfg=None, seed=0)

Every row continues from its own turns, at its own turn: each round makes ONE `sampling.generate`
call for the agent over all live rows whose turn it is (last turn by the user, or no turns), then
ONE call for the simulator over all live rows whose last turn is the agent's. A row ends

* terminal: the simulator's reply contains `END_MARKER` (stripped from the stored text), or
* truncated: it is the agent's turn and the row already has `max_agent_turns` agent turns (the
  simulator always answers the last agent turn first, so the reward sees the user's reaction).

For task "p4g" every finished row is then asked `OUTCOME_REQUEST` (one batched simulator call, the
chat shown with its end marker as in training) and the answer parsed with
`rewards.parse_donation`. Rewards: ES `rewards.es_engaged` over the user's last turns (pattern /
last_n from `reward_cfg`: `es_pattern`, `es_last_n`), P4G the parsed donation (0.0 if none).

`outcome` of each returned dialogue gets `reward`, `num_turns` (agent turns), `terminal`, and for
P4G `donation` (float or None when unparsable) and `outcome_text`. Deterministic given `seed`.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from engage_jax import readout, rewards, sampling
from engage_jax.chat_cache import ConversationCache
from engage_jax.data import chat
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.sampling import SamplingParams
from engage_jax.seeding import sub_seed
from engage_jax.tokenizer import ChatRenderer


@dataclasses.dataclass
class Speaker:
  """One side of a simulated conversation: a model, its tokenizer and its sampling settings.

  model: `engage_jax.models.CausalLM`; tokenizer: `engage_jax.tokenizer.ChatTokenizer`;
  max_prompt_len: prompts longer than this drop their oldest messages (system prompt kept), then,
  if still too long, their oldest tokens.
  sampling: what every `sampling.generate` call of this speaker gets; empty `stop_token_ids`
  become the tokenizer's end-of-turn and eos ids (a speaker stops at the end of its turn).
  kv_cache: keep the KV cache of the last call (`chat_cache.ConversationCache`), so a chat's next
  turn prefills only its new tokens (same results up to fp32 rounding); False: every call
  prefills from token 0 (`sampling.generate`). Chat ids are rendered incrementally either way
  (`tokenizer.ChatRenderer`: the ids of a full render).
  """
  model: Any
  tokenizer: Any
  max_prompt_len: int = 256
  sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
  kv_cache: bool = True
  cache: ConversationCache = dataclasses.field(default_factory=ConversationCache, repr=False, compare=False)
  renderer: ChatRenderer | None = dataclasses.field(default=None, repr=False, compare=False)

  def __post_init__(self):
    if self.max_prompt_len < 1 or self.sampling.max_new_tokens < 1:
      raise ValueError(f"Speaker: max_prompt_len ({self.max_prompt_len}) and max_new_tokens "
                       f"({self.sampling.max_new_tokens}) must be positive")
    if not self.sampling.stop_token_ids and self.tokenizer is not None:
      tok = self.tokenizer
      stops = tuple(dict.fromkeys(int(t) for t in (tok.end_of_turn_id, tok.eos_id) if t is not None))
      self.sampling = dataclasses.replace(self.sampling, stop_token_ids=stops)
    if self.renderer is None and self.tokenizer is not None:
      self.renderer = ChatRenderer(self.tokenizer)

  def prompt(self, messages: list[dict]) -> list[int]:
    """Chat-template ids with a generation prompt, left-truncated to `max_prompt_len`."""
    ids = self.renderer.ids(messages)
    msgs = list(messages)
    first = 1 if msgs and msgs[0]["role"] == "system" else 0
    while len(ids) > self.max_prompt_len and len(msgs) > first + 1:
      del msgs[first]
      ids = self.tokenizer.apply_chat(msgs, add_generation_prompt=True)
    return ids[-self.max_prompt_len:]

  def generate_ids(self, prompts: Sequence[list[int]], seed: int,
                   row_seeds: Sequence[int] | None = None) -> list[list[int]]:
    """One batched `sampling.generate` call over prompt ids (through the conversation cache when
    `kv_cache`); the new ids of each (ragged). row_seeds: one seed per prompt (`seed` unused), so
    a row's sample does not depend on the other rows of the batch."""
    per_row = {} if row_seeds is None else {"row_seeds": row_seeds}
    if self.kv_cache:
      return self.cache.generate(self.model, prompts, seed=seed, **per_row, **self.sampling.kwargs())
    return sampling.generate(self.model, prompts, seed=seed, **per_row, **self.sampling.kwargs())

  def generate(self, messages: Sequence[list[dict]], seed: int,
               row_seeds: Sequence[int] | None = None) -> list[str]:
    """One batched `sampling.generate` call; returns the decoded, stripped replies."""
    prompts = [self.prompt(m) for m in messages]
    ids = self.generate_ids(prompts, seed) if row_seeds is None else self.generate_ids(prompts, seed, row_seeds)
    return [self.tokenizer.decode(x).strip() for x in ids]


def score_finished(simulator: Speaker, dialogues: list[Dialogue], *, task: str, reward_cfg: Any = None,
                   seed: int = 0, row_seeds: Sequence[int] | None = None) -> list[dict]:
  """Outcome of finished chats: ES the regex over the user's last turns; P4G ONE batched simulator
  call answering OUTCOME_REQUEST (the chat shown with its end marker, as in training), parsed.
  Returns per dialogue {"reward"} (+ "donation", "outcome_text" for P4G). reward_cfg's readout
  (P4G): "expected" scores the canonical answers instead (`readout.expected_donations`: "reward",
  "expected_donation", "outcome_mass", "outcome_fallback"; no "donation", never unparsed); "both"
  adds the sampled answer beside it as "sampled_donation" / "outcome_text". row_seeds: one seed per
  dialogue for the sampled answer (`Speaker.generate`; `seed` unused)."""
  st = rewards.RewardSettings.from_any(reward_cfg)
  if task == "es":
    return [{"reward": 1.0 if rewards.es_engaged([t.text for t in d.turns if t.role == USER], st.es_pattern,
                                                 st.es_last_n) else 0.0} for d in dialogues]
  if not dialogues:
    return []
  if st.readout != "sampled":
    out = readout.expected_donations(simulator, dialogues, st.outcome_amounts, st.donation_cap)
    if st.readout == "expected":
      return out
  msgs = [chat.simulator_messages(task, d.condition, d.turns, mark_end=True)
          + [{"role": "user", "content": chat.OUTCOME_REQUEST}] for d in dialogues]
  texts = simulator.generate(msgs, seed) if row_seeds is None else simulator.generate(msgs, seed, row_seeds)
  if st.readout == "both":
    for o, text in zip(out, texts):
      o.update(sampled_donation=rewards.parse_donation(text, st.donation_cap), outcome_text=text)
    return out
  out = []
  for text in texts:
    donation = rewards.parse_donation(text, st.donation_cap)
    out.append({"reward": 0.0 if donation is None else float(donation), "donation": donation,
                "outcome_text": text})
  return out


def simulate(agent: Speaker, simulator: Speaker, starts: list[Dialogue], *, task: str,
             max_agent_turns: int, reward_cfg: Any = None, seed: int = 0,
             progress: bool = False, agent_turns: Callable[[list[Dialogue], int], list[str]] | None = None,
             call_seed: Callable[[int, str], int] | None = None,
             row_seeds: Sequence[int] | None = None, max_rows: int = 0) -> list[Dialogue]:
  """Continues every start dialogue to its end (see module docstring); inputs are not modified.
  progress: a tqdm bar over agent turns (with an ETA).
  agent_turns: (the dialogues whose agent turn it is, seed) -> their agent texts; default one
  `agent.generate` call over their agent messages (experiments.baselines.BestOfN plugs in here).
  call_seed: (call index, "agent" | "simulator" | "outcome") -> that call's seed; default
  `sub_seed(seed, call, bits=32)` for every call.
  row_seeds: one seed per start (then `seed` and `call_seed` are unused): the j-th generate call
  that row i takes part in (agent, simulator, outcome, in its own order) samples it with
  `sub_seed(row_seeds[i], j, bits=32)` (`sampling.generate(row_seeds=...)`), so a chat's text
  depends on its start and seed only, not on which chats share its batches (`max_rows`, the
  search's trees in flight, evaluation's chats) — up to fp32 rounding of the batch shape.
  max_rows: at most this many chats in flight (0 = all); a chat that ends frees its row for the
  next waiting start (continuous batching: calls stay full while starts wait), and the outcome
  scoring runs in chunks of this size.

  starts: dialogues (condition + opening turns, possibly none); task: "es" | "p4g";
  max_agent_turns: cap on agent turns per conversation (counting those already in the start).
  Returns new `Dialogue`s in the order of `starts`.
  """
  if task not in ("es", "p4g"):
    raise ValueError(f"simulate: unknown task {task!r}; expected 'es' or 'p4g'")
  if max_agent_turns < 1:
    raise ValueError(f"simulate: max_agent_turns must be positive, got {max_agent_turns}")
  if max_rows < 0:
    raise ValueError(f"simulate: max_rows must be >= 0 (0 = all), got {max_rows}")
  if row_seeds is not None:
    if len(row_seeds) != len(starts):
      raise ValueError(f"simulate: {len(row_seeds)} row_seeds for {len(starts)} starts")
    if agent_turns is not None:
      raise ValueError("simulate: row_seeds needs the default agent turns (agent_turns takes one seed)")
  if agent_turns is None:
    agent_turns = lambda ds, s, rs=None: agent.generate(
        [chat.agent_messages(task, d.turns) for d in ds], s, *([] if rs is None else [rs]))
  if call_seed is None:
    call_seed = lambda call, _role: sub_seed(seed, call, bits=32)
  rows = [dataclasses.replace(d, turns=[copy.copy(t) for t in d.turns], condition=dict(d.condition),
                              outcome=dict(d.outcome)) for d in starts]
  terminal = [False] * len(rows)
  row_calls = [0] * len(rows)  # generate calls each row has taken part in (its seed counter)

  def seeds_of(idx: list[int]) -> list[int] | None:
    if row_seeds is None:
      return None
    out = [sub_seed(row_seeds[i], row_calls[i], bits=32) for i in idx]
    for i in idx:
      row_calls[i] += 1
    return out

  waiting = list(range(len(rows)))[::-1]  # a stack: pop() takes the next start in order
  active: list[int] = []
  limit = max_rows or len(rows)
  calls = 0
  bar = tqdm(total=max_agent_turns, desc=f"chats x{len(rows)}", unit="turn", leave=False,
             disable=not progress or not rows)
  while active or waiting:
    bar.update(1)
    # the agent's turn: no turns yet or the user spoke last; rows at the cap end here (truncated)
    # and free their slot for a waiting start (which may itself be at the cap: it ends at once).
    agent_rows = []
    while True:
      still = []
      for i in active:
        d = rows[i]
        if d.turns and d.turns[-1].role != USER:
          still.append(i)
        elif d.num_agent_turns < max_agent_turns:
          still.append(i)
          agent_rows.append(i)
      active = still
      if not waiting or len(active) >= limit:
        break
      fresh = []
      while waiting and len(active) + len(fresh) < limit:
        fresh.append(waiting.pop())
      active = active + fresh
      agent_rows = []
    if not active:
      continue
    if agent_rows:
      texts = agent_turns([rows[i] for i in agent_rows], call_seed(calls, "agent"),
                          *([] if row_seeds is None else [seeds_of(agent_rows)]))
      calls += 1
      for i, text in zip(agent_rows, texts):
        rows[i].turns.append(Turn(AGENT, text))
    sim_rows = [i for i in active if rows[i].turns and rows[i].turns[-1].role == AGENT]
    if sim_rows:
      msgs = [chat.simulator_messages(task, rows[i].condition, rows[i].turns) for i in sim_rows]
      rs = seeds_of(sim_rows)
      texts = (simulator.generate(msgs, call_seed(calls, "simulator")) if rs is None
               else simulator.generate(msgs, call_seed(calls, "simulator"), rs))
      calls += 1
      for i, text in zip(sim_rows, texts):
        ended = chat.END_MARKER in text
        rows[i].turns.append(Turn(USER, chat.strip_end_marker(text) if ended else text))
        if ended:
          terminal[i] = True
      active = [i for i in active if not terminal[i]]
  bar.close()
  scores: list[dict] = []
  chunk = max_rows or max(len(rows), 1)
  for c, lo in enumerate(range(0, len(rows), chunk)):
    idx = list(range(lo, min(len(rows), lo + chunk)))
    scores += score_finished(simulator, [rows[i] for i in idx], task=task, reward_cfg=reward_cfg,
                             seed=call_seed(calls + c, "outcome"), row_seeds=seeds_of(idx))
  for i, (d, score) in enumerate(zip(rows, scores)):
    d.outcome.update(num_turns=d.num_agent_turns, terminal=bool(terminal[i]), **score)
  return rows
