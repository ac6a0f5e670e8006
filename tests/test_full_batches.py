"""Full batches with a tiny random model: per-row sampling seeds, chats refilled into free rows
(`rollout.simulate(max_rows=...)`) and trees in flight in the search give the same texts however
rows are packed (greedy and sampled)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from engage_jax import rollout, sampling
from engage_jax.chat_cache import ConversationCache
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.sampling import SamplingParams
from engage_jax.search import ModelEnv, SearchConfig, search
from engage_jax.seeding import sub_seed

from tests.search._search_helpers import es_roots

SAMPLED = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, stop_token_ids=())


@pytest.fixture(scope="module")
def tok(sandbox_chat_tok):
  return sandbox_chat_tok


@pytest.fixture(scope="module")
def model(sandbox_chat_model):
  return sandbox_chat_model


def _prompts(n):
  return [[1 + (7 * i + j) % 300 for j in range(3 + i % 5)] for i in range(n)]


def test_row_seeds_make_a_row_independent_of_its_batch(model):
  prompts = _prompts(13)
  seeds = [sub_seed(5, i) for i in range(13)]
  full = sampling.generate(model, prompts, seed=0, row_seeds=seeds, **SAMPLED)          # bucket 16
  alone = [sampling.generate(model, [p], seed=0, row_seeds=[s], **SAMPLED)[0]            # bucket 8
           for p, s in zip(prompts[:3], seeds[:3])]
  order = [12, 0, 5, 3]
  picked = sampling.generate(model, [prompts[i] for i in order], seed=0,
                             row_seeds=[seeds[i] for i in order], **SAMPLED)
  assert alone == full[:3]
  assert picked == [full[i] for i in order]
  # the rows differ from each other and from one shared key (the sampling is not degenerate)
  assert len({tuple(x) for x in full}) > 8
  assert sampling.generate(model, prompts, seed=0, **SAMPLED) != full
  # the conversation cache (empty store: a fresh prefill) draws the same tokens with the same seeds
  assert ConversationCache().generate(model, [prompts[i] for i in order], row_seeds=[seeds[i] for i in order],
                                      **SAMPLED) == picked
  with pytest.raises(ValueError, match="row_seeds"):
    sampling.generate(model, prompts, row_seeds=seeds[:2], **SAMPLED)


def _starts():
  """Chats that are at different turns (0-2 agent turns done), so rows finish at different calls."""
  out = []
  for i in range(5):
    turns = [Turn(USER, "hi . i feel sad because of my job .")]
    for _ in range(i % 3):
      turns += [Turn(AGENT, "i am sorry to hear that ."), Turn(USER, "thanks .")]
    out.append(Dialogue(f"d{i}", "es", turns, {"emotion_type": "sadness"}, {}))
  return out


def test_simulate_refill_gives_the_same_chats(tok, model):
  def speakers():  # with the conversation cache (the default): kept prefixes differ with the packing
    agent = rollout.Speaker(model, tok, max_prompt_len=96,
                            sampling=SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9))
    sim = rollout.Speaker(model, tok, max_prompt_len=96, sampling=SamplingParams(max_new_tokens=6, temperature=1.0))
    return agent, sim

  seeds = [sub_seed(9, i) for i in range(5)]
  runs = {}
  for max_rows in (0, 2, 1):
    agent, sim = speakers()
    calls = []
    inner = sim.generate_ids
    sim.generate_ids = lambda p, s, rs=None, inner=inner, calls=calls: calls.append(len(p)) or inner(p, s, rs)
    got = rollout.simulate(agent, sim, _starts(), task="es", max_agent_turns=3, row_seeds=seeds,
                           max_rows=max_rows)
    runs[max_rows] = ([d.turns for d in got], [d.outcome for d in got], calls)
  assert runs[2][:2] == runs[0][:2] and runs[1][:2] == runs[0][:2]
  assert max(runs[2][2]) == 2 and max(runs[1][2]) == 1 and runs[0][2][0] == 5
  # max_rows=2: while chats wait, every simulator call is full (a finished row is refilled)
  assert runs[2][2][:-1].count(2) >= len(runs[2][2]) - 2
  assert all(d.num_agent_turns == 3 or d.outcome["terminal"] for d in
             [Dialogue("x", "es", t, {}, o) for t, o in zip(*runs[0][:2])])
  # another set of seeds gives other chats
  agent, sim = speakers()
  other = rollout.simulate(agent, sim, _starts(), task="es", max_agent_turns=3,
                           row_seeds=[s + 1 for s in seeds])
  assert [d.turns for d in other] != runs[0][0]


def test_search_trees_in_flight_give_the_same_trees(tok, model):
  """ModelEnv (sampled agent and simulator, conversation cache on): 4 trees searched 1 or 4 at a
  time grow the same nodes, texts and values."""
  cfg = SearchConfig(k=2, budget=2, max_turns=3, max_depth=2, prune_similarity=None, seed=4,
                     agent_sampling=SamplingParams(max_new_tokens=5, temperature=0.9, top_p=0.9),
                     simulator_sampling=SamplingParams(max_new_tokens=5, temperature=1.0))

  def run(in_flight):
    env = ModelEnv.from_config(model, model, tok, cfg, task="es", reward_cfg=None, max_prompt_len=96)
    trees = search(env, es_roots(4), cfg, in_flight=in_flight)
    texts = [[(t.text if t else None) for t in row] for row in trees.agent_turn]
    users = [[(t.text if t else None) for t in row] for row in trees.user_turn]
    return texts, users, trees.parent.tolist(), np.nan_to_num(trees.value(), nan=-1.0).tolist()

  ref = run(0)
  assert len({t for row in ref[0] for t in row if t}) > 8
  assert run(1) == ref


def test_evaluate_runs_all_chats_in_one_refilled_call(tok, model, monkeypatch):
  """evaluate: S x C chats in ONE simulate call (batch_size in flight); the chats are the same for
  batch_size 0 (all) and 2, and each chat has its own seed."""
  from ml_collections import ConfigDict
  from engage_jax import evaluate as ev
  calls = []
  real = rollout.simulate

  @functools.wraps(real)  # evaluate reads the signature (row_seeds, max_rows) through __wrapped__
  def counting(*a, **kw):
    calls.append((len(a[2]), kw["max_rows"]))
    return real(*a, **kw)

  monkeypatch.setattr(ev, "_default_simulate", lambda: counting)
  conds = _starts()[:3]
  runs = {}
  for bs in (0, 2):
    agent = rollout.Speaker(model, tok, max_prompt_len=96,
                            sampling=SamplingParams(max_new_tokens=5, temperature=1.0, top_p=0.9))
    sim = rollout.Speaker(model, tok, max_prompt_len=96, sampling=SamplingParams(max_new_tokens=5, temperature=1.0))
    cfg = ConfigDict(dict(task="es", eval=dict(samples_per_condition=2, batch_size=bs, max_agent_turns=3)))
    _, ds = ev.evaluate(agent, sim, conds, cfg, seed=3)
    runs[bs] = [(d.id, [t.text for t in d.turns], d.outcome["seed"]) for d in ds]
  assert calls == [(6, 0), (6, 2)]
  assert runs[2] == runs[0]
  assert [r[0] for r in runs[0]] == [f"d{i}/s{k}" for k in range(2) for i in range(3)]
  assert len({r[2] for r in runs[0]}) == 6
  assert runs[0][0][1] != runs[0][3][1]  # the two samples of a condition differ
