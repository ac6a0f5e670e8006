"""Tests for engage_jax.rollout: batched agent ↔ simulator conversations (shapes, termination,
turn cap, P4G outcome, determinism) with a tiny random model and a tiny BPE tokenizer."""
from __future__ import annotations

import itertools

import pytest

from engage_jax import rollout
from engage_jax.data import chat
from engage_jax.data.dialogue import USER, Dialogue, Turn
from engage_jax.sampling import SamplingParams


@pytest.fixture(scope="module")
def tok(sandbox_chat_tok):
  return sandbox_chat_tok


@pytest.fixture(scope="module")
def model(sandbox_chat_model):
  return sandbox_chat_model


def _starts(task, n=3):
  out = []
  for i in range(n):
    turns = [Turn(USER, "hi . i feel sad because of my job .")] if (task == "es" and i % 2 == 0) else []
    out.append(Dialogue(f"d{i}", task, turns, {"emotion_type": "sadness"}, {}))
  return out


def test_simulate_turn_cap_and_determinism(tok, model):
  agent = rollout.Speaker(model, tok, max_prompt_len=64,
                          sampling=SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9))
  sim = rollout.Speaker(model, tok, max_prompt_len=64, sampling=SamplingParams(max_new_tokens=6, temperature=0.3))
  starts = _starts("es")
  a = rollout.simulate(agent, sim, starts, task="es", max_agent_turns=2, seed=0)
  b = rollout.simulate(agent, sim, starts, task="es", max_agent_turns=2, seed=0)
  c = rollout.simulate(agent, sim, starts, task="es", max_agent_turns=2, seed=1)
  assert [d.turns for d in a] == [d.turns for d in b]
  assert [d.turns for d in a] != [d.turns for d in c]
  assert all(s.outcome == {} and len(s.turns) <= 1 for s in starts)    # inputs untouched
  for s, d in zip(starts, a):
    assert d.id == s.id and d.turns[:len(s.turns)] == s.turns
    roles = [t.role for t in d.turns]
    assert all(r1 != r2 for r1, r2 in itertools.pairwise(roles))           # alternating
    assert d.outcome["num_turns"] == d.num_agent_turns
    assert d.outcome["reward"] in (0.0, 1.0)
    if not d.outcome["terminal"]:
      assert d.num_agent_turns == 2 and roles[-1] == USER              # cap, user answered last
  # p4g with the real model: outcome fields present
  p = rollout.simulate(agent, sim, _starts("p4g", 2), task="p4g", max_agent_turns=1, seed=0)
  for d in p:
    assert set(d.outcome) >= {"reward", "num_turns", "terminal", "donation", "outcome_text"}
    assert d.num_agent_turns == 1 and isinstance(d.outcome["outcome_text"], str)


def test_prompt_left_truncation(tok, model):
  sp = rollout.Speaker(model, tok, max_prompt_len=40, sampling=SamplingParams(max_new_tokens=4))
  msgs = chat.agent_messages("es", [Turn(USER, "hi . i feel sad because of my job .")] * 6)
  ids = sp.prompt(msgs)
  assert len(ids) <= 40
  assert ids[-len(tok.apply_chat(msgs[-1:], add_generation_prompt=True)) + 1:] == \
      tok.apply_chat(msgs[-1:], add_generation_prompt=True)[1:]        # newest message kept


class _Scripted(rollout.Speaker):
  """A Speaker that answers from a function of the messages (no model); records batch sizes."""

  def __init__(self, tok, fn):
    super().__init__(None, tok)
    self.fn, self.batches = fn, []

  def generate(self, messages, seed):
    self.batches.append(len(messages))
    return [self.fn(m) for m in messages]


def test_end_marker_terminal_and_p4g_outcome(tok):
  agent = _Scripted(tok, lambda m: "we help children .")
  # the simulator ends d0 at its first reply, d1 at its second; answers the outcome request.
  def sim_fn(m):
    if m[-1]["content"] == chat.OUTCOME_REQUEST:
      return "I will donate $0.50." if "a" in m[0]["content"] else "nothing"
    n_agent = sum(x["role"] == "user" for x in m)
    return "ok bye [END]" if n_agent >= (1 if "first" in m[0]["content"] else 2) else "tell me more ."
  sim = _Scripted(tok, sim_fn)
  starts = [Dialogue("d0", "p4g", [], {"k": "first"}, {}), Dialogue("d1", "p4g", [], {"k": "second"}, {}),
            Dialogue("d2", "p4g", [], {"k": "x"}, {})]
  sim.fn = lambda m, f=sim_fn: f(m) if "x" not in m[0]["content"] else (
      "nothing" if m[-1]["content"] == chat.OUTCOME_REQUEST else "hmm .")
  out = rollout.simulate(agent, sim, starts, task="p4g", max_agent_turns=3, seed=0)
  assert [d.outcome["terminal"] for d in out] == [True, True, False]
  assert [d.num_agent_turns for d in out] == [1, 2, 3]
  assert out[0].turns[-1].text == "ok bye" and chat.END_MARKER not in out[1].turns[-1].text
  assert out[0].outcome["donation"] == 0.5 and out[0].outcome["reward"] == 0.5
  assert out[2].outcome["donation"] == 0.0 and out[2].outcome["outcome_text"] == "nothing"
  assert agent.batches == [3, 2, 1]                       # one batched call per round, live rows only
  assert sim.batches == [3, 2, 1, 3]                      # + one outcome call over all rows
  with pytest.raises(ValueError):
    rollout.simulate(agent, sim, starts, task="xx", max_agent_turns=3)


def test_es_reward(tok):
  agent = _Scripted(tok, lambda m: "that sounds hard .")
  sim = _Scripted(tok, lambda m: "thank you , i feel much better now . [END]")
  out = rollout.simulate(agent, sim, _starts("es", 2), task="es", max_agent_turns=4, seed=0)
  assert all(d.outcome["reward"] == 1.0 and d.outcome["terminal"] and d.num_agent_turns == 1 for d in out)
  out = rollout.simulate(agent, sim, _starts("es", 1), task="es", max_agent_turns=4,
                         reward_cfg={"es_pattern": r"never matches xyz"})
  assert out[0].outcome["reward"] == 0.0


@pytest.mark.parametrize("kv_cache", [False, True])
def test_speaker_passes_its_sampling_params_to_generate(tok, monkeypatch, kv_cache):
  """What reaches `sampling.generate` (kv_cache off) or the conversation cache's `generate` (on,
  the same arguments): the SamplingParams fields, and the tokenizer's end-of-turn / eos ids when
  the params name no stop ids (explicit ones are kept)."""
  from engage_jax import sampling
  from engage_jax.chat_cache import ConversationCache
  stops = tuple(dict.fromkeys(t for t in (tok.end_of_turn_id, tok.eos_id) if t is not None))
  assert stops
  seen = []
  fake = lambda model, prompts, **kw: seen.append(kw) or [[]] * len(prompts)
  monkeypatch.setattr(sampling, "generate", fake if not kv_cache else None)
  monkeypatch.setattr(ConversationCache, "generate",
                      (lambda self, model, prompts, **kw: fake(model, prompts, **kw)) if kv_cache else None)
  params = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.8, top_k=3)
  sp = rollout.Speaker(None, tok, 64, sampling=params, kv_cache=kv_cache)
  sp.generate([[{"role": "user", "content": "hi"}]], seed=11)
  assert seen[-1] == dict(max_new_tokens=7, temperature=0.5, top_p=0.8, top_k=3, seed=11, stop_token_ids=stops)
  rollout.Speaker(None, tok, 64, sampling=SamplingParams(stop_token_ids=(5,)),
                  kv_cache=kv_cache).generate_ids([[1, 2]], 0)
  assert seen[-1]["stop_token_ids"] == (5,)
  with pytest.raises(ValueError, match="max_new_tokens"):
    rollout.Speaker(None, tok, 64, sampling=SamplingParams(max_new_tokens=0))


def test_sandbox_config_sampling_equals_the_old_flat_values(tok):
  """configs/sandbox_es.py (the demo): the Speakers and the SearchConfig get exactly the values the
  flat keys gave before the sampling sub-sections (search temperature/top_p/max_new_tokens 0.9,
  0.9, 32, sim_* 1.0, 1.0, 32; eval 0.7, 0.9, 32 and 1.0, 1.0, 32; top_k 0 everywhere)."""
  import importlib.util
  import sys
  from pathlib import Path
  from engage_jax import build
  configs = Path(__file__).resolve().parents[1] / "configs"
  spec = importlib.util.spec_from_file_location("cfg_sandbox_es_sampling", configs / "sandbox_es.py")
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(configs))
  try:
    spec.loader.exec_module(mod)
  finally:
    sys.path.remove(str(configs))
  cfg = mod.get_config()
  old = {("search", "agent"): (32, 0.9, 0.9, 0), ("search", "simulator"): (32, 1.0, 1.0, 0),
         ("eval", "agent"): (32, 0.7, 0.9, 0), ("eval", "simulator"): (32, 1.0, 1.0, 0)}
  stops = tuple(dict.fromkeys(t for t in (tok.end_of_turn_id, tok.eos_id) if t is not None))
  for (section, role), (n, t, p, k) in old.items():
    sp = build.speaker(cfg, cfg[section], None, tok, role)
    assert sp.max_prompt_len == 256
    assert sp.sampling == SamplingParams(max_new_tokens=n, temperature=t, top_p=p, top_k=k, stop_token_ids=stops)
    assert type(sp.sampling.max_new_tokens) is int and type(sp.sampling.temperature) is float
  scfg = build.search_config(cfg)
  assert scfg.agent_sampling == SamplingParams(max_new_tokens=32, temperature=0.9, top_p=0.9, top_k=0)
  assert scfg.simulator_sampling == SamplingParams(max_new_tokens=32, temperature=1.0, top_p=1.0, top_k=0)


class _ScriptedSimulator:
  """Duck-typed simulator Speaker: replies "ok <n>" to every chat (never ends it); records calls."""

  def __init__(self):
    self.batches = []

  def generate(self, messages, seed):
    self.batches.append(len(messages))
    return [f"ok {len(m)}" for m in messages]


def test_turn_cap_counts_the_agent_turns_already_in_the_start():
  """max_agent_turns=3 over starts that already hold 0, 1, 2 (the last one unanswered), 3 and 4
  agent turns: each ends with max(3, its own count) agent turns, so 3, 2, 1, 0 and 0 new ones, and
  the simulator answers a trailing agent turn first; the starts' turns are kept as they were."""
  def t(role, i):
    return Turn(role, f"{role} {i}")
  u, a = USER, "agent"
  starts = [
      Dialogue("none", "es", [t(u, 0)], {}, {}),
      Dialogue("one", "es", [t(u, 0), t(a, 0), t(u, 1)], {}, {}),
      Dialogue("two_open", "es", [t(u, 0), t(a, 0), t(u, 1), t(a, 1)], {}, {}),
      Dialogue("three", "es", [t(u, 0), t(a, 0), t(u, 1), t(a, 1), t(u, 2), t(a, 2), t(u, 3)], {}, {}),
      Dialogue("four", "es", [t(u, i // 2) if i % 2 == 0 else t(a, i // 2) for i in range(9)], {}, {}),
  ]
  new_agent = []

  def agent_turns(ds, seed):
    new_agent.append([d.id for d in ds])
    return [f"new agent reply to {d.id}" for d in ds]

  sim = _ScriptedSimulator()
  out = rollout.simulate(None, sim, starts, task="es", max_agent_turns=3, seed=0, agent_turns=agent_turns)
  want_new = {"none": 3, "one": 2, "two_open": 1, "three": 0, "four": 0}
  for s, d in zip(starts, out):
    assert d.turns[:len(s.turns)] == s.turns, d.id
    added = d.turns[len(s.turns):]
    assert sum(x.role == "agent" for x in added) == want_new[d.id], (d.id, [x.text for x in added])
    assert d.num_agent_turns == max(3, s.num_agent_turns) == d.outcome["num_turns"], d.id
    assert d.turns[-1].role == USER and not d.outcome["terminal"], d.id   # capped, the user spoke last
  assert sum(len(ids) for ids in new_agent) == 6
  assert "two_open" not in new_agent[0]                       # its open agent turn is answered first
