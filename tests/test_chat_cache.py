"""Tests for the conversation KV cache (engage_jax.chat_cache) and incremental chat rendering
(tokenizer.ChatRenderer): rendered ids equal a full render over real ESConv / P4G chats; chats
with the cache on are token-identical to the uncached path (greedy and same-seed sampling),
including truncated prompts, repeated prompts and changed weights."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from engage_jax import rollout, sampling
from engage_jax.chat_cache import ConversationCache, longest_prefix
from engage_jax.data import chat, esconv, p4g, sandbox
from engage_jax.data.dialogue import Dialogue
from engage_jax.models import CausalLM, ModelConfig
from engage_jax.sampling import SamplingParams
from engage_jax.tokenizer import ChatRenderer, ChatTokenizer


@pytest.fixture(scope="module")
def tok(sandbox_chat_tok):
  return sandbox_chat_tok


@pytest.fixture(scope="module")
def model(tok):
  """A tiny random model with peaked logits (the final norm scaled up: the residual stream, where
  attention matters as much as the token embedding, is untouched), so greedy argmax gaps are far
  above fp32 rounding and token identity is a fair test, and sharp attention (queries scaled up),
  so that a wrong position or a wrong slot changes the outputs."""
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
  return _peaked(CausalLM(cfg, rngs=nnx.Rngs(0)))


def _peaked(m: CausalLM) -> CausalLM:
  m.norm.weight[...] = m.norm.weight[...] * 30
  q = m.layers.self_attn.q_proj  # stacked over layers; sharp attention: outputs depend on which
  q.kernel[...] = q.kernel[...] * 8  # slots hold what, and where
  return m


def _real_chats(data_dir, n: int) -> list[Dialogue]:
  es = esconv.load_split(data_dir, "valid")[:n]
  pg = p4g.load(data_dir)[:n]
  return list(es) + list(pg)


def _check_incremental(tokenizer: ChatTokenizer, dialogues: list[Dialogue]) -> None:
  encoded = []
  real_encode = tokenizer.encode
  tokenizer.encode = lambda text: encoded.append(len(text)) or real_encode(text)
  try:
    renderer = ChatRenderer(tokenizer)
    full_chars = 0
    for d in dialogues:
      views = [chat.agent_messages(d.task, d.turns),
               chat.simulator_messages(d.task, d.condition, d.turns)]
      for msgs in views:
        for n in range(1, len(msgs) + 1):   # turn by turn, as a chat grows
          got = renderer.ids(msgs[:n])
          text = tokenizer.render_chat(msgs[:n], add_generation_prompt=True)
          full_chars += len(text)
          assert got == real_encode(text), (d.id, n)
        outcome = chat.simulator_messages(d.task, d.condition, d.turns, mark_end=True) + [
            {"role": "user", "content": chat.OUTCOME_REQUEST}]
        assert renderer.ids(outcome) == tokenizer.apply_chat(outcome, add_generation_prompt=True)
  finally:
    del tokenizer.encode
  # incremental: the renderer encoded far less text than the full renders hold
  assert 0 < sum(encoded) < 0.25 * full_chars, (sum(encoded), full_chars)


def test_incremental_render_equals_full_render_smollm2(data_dir):
  from engage_jax.models.gguf import smollm2_135m_instruct
  _check_incremental(ChatTokenizer.load(smollm2_135m_instruct()), _real_chats(data_dir, 12))


def test_incremental_render_equals_full_render_sandbox_tokenizer(data_dir, tok):
  _check_incremental(tok, _real_chats(data_dir, 12) + sandbox.generate("p4g", 4, 1))


def test_longest_prefix():
  stored = np.array([[1, 2, 3, -1], [1, 2, 4, 5], [7, 2, 3, 4]], np.int32)
  assert longest_prefix(stored, np.array([1, 2, 4, 5, 6], np.int32)).tolist() == [2, 4, 0]
  assert longest_prefix(stored, np.array([1], np.int32)).tolist() == [1, 1, 0]


def _starts(task: str, n: int = 5) -> list[Dialogue]:
  out = []
  for i, d in enumerate(sandbox.generate(task, n, 1)):
    out.append(Dialogue(d.id, task, d.turns[:1] if i % 2 else [], d.condition, {}))
  return out


def _simulate(model, tok, kv: bool, task: str, temperature: float, max_prompt_len: int = 512):
  params = SamplingParams(max_new_tokens=12, temperature=temperature, top_p=0.9 if temperature else 1.0)
  agent = rollout.Speaker(model, tok, max_prompt_len, sampling=params, kv_cache=kv)
  sim = rollout.Speaker(model, tok, max_prompt_len, sampling=params, kv_cache=kv)
  done = rollout.simulate(agent, sim, _starts(task), task=task, max_agent_turns=4, seed=3)
  return [(d.turns, d.outcome) for d in done], agent.cache.history + sim.cache.history


@pytest.mark.parametrize("task,temperature", [("es", 0.0), ("p4g", 0.0), ("es", 1.0)])
def test_cached_chats_equal_uncached(model, tok, task, temperature):
  """4 agent turns (+ the P4G outcome question): cache on gives the same chats as cache off, greedy
  and sampled with the same seed (the sampler's keys and batch bucket are the same)."""
  on, stats = _simulate(model, tok, True, task, temperature)
  off, _ = _simulate(model, tok, False, task, temperature)
  assert on == off
  kept = sum(s.kept_tokens for s in stats)
  assert kept > 0.5 * sum(s.prompt_tokens for s in stats)     # most of each prompt was reused
  assert all(s.kept_tokens + s.prefilled_tokens <= s.prompt_tokens for s in stats)


def test_truncated_prompts_fall_back(model, tok):
  """Prompts over max_prompt_len are truncated as before (oldest messages, then tokens) and the
  rows whose prefix changed are prefilled afresh: still identical to the uncached path."""
  on, stats = _simulate(model, tok, True, "p4g", 0.0, max_prompt_len=70)
  off, _ = _simulate(model, tok, False, "p4g", 0.0, max_prompt_len=70)
  assert on == off
  assert any(s.prefilled_tokens > s.prompt_tokens // 2 for s in stats[1:])  # fresh prefills happened


def test_repeated_prompts_and_changed_weights(model, tok):
  """Nine rows over three distinct prompts (the shared-prefill path), continuing a previous call;
  then the same call after the weights change: the store must not serve the old keys."""
  store = ConversationCache()
  renderer = ChatRenderer(tok)
  base = [renderer.ids(chat.agent_messages("es", d.turns[:1])) for d in sandbox.generate("es", 3, 2)]
  kw = dict(max_new_tokens=10, temperature=0.0, stop_token_ids=())
  first = store.generate(model, base, **kw)
  assert first == sampling.generate(model, base, **kw)
  grown = [b + f + tok.encode(" thanks") for b, f in zip(base, first)] * 3
  assert store.generate(model, grown, **kw) == sampling.generate(model, grown, **kw)
  assert store.history[-1].kept_tokens > 0.8 * store.history[-1].prompt_tokens
  nnx.update(model, nnx.state(_peaked(CausalLM(model.config, rngs=nnx.Rngs(1)))))                     # new weights, same module object
  try:
    assert store.generate(model, grown, **kw) == sampling.generate(model, grown, **kw)
    assert store.history[-1].kept_tokens == 0
  finally:
    nnx.update(model, nnx.state(_peaked(CausalLM(model.config, rngs=nnx.Rngs(0)))))


def test_search_children_continue_their_parents_cache(model, tok):
  """i×MCTS with ModelEnv (sampled agent and simulator): every generated token is the same with
  the cache on and off, and after the first call most prompt tokens are kept: a child's rollout
  continues the row that generated its agent turn, the next expansion the rollout of its leaf."""
  from engage_jax.search import ModelEnv, SearchConfig, search
  from tests.search._search_helpers import es_roots
  cfg = SearchConfig(k=2, budget=2, max_turns=2, max_depth=2, prune_similarity=None, selection="uct",
                     agent_sampling=SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9),
                     simulator_sampling=SamplingParams(max_new_tokens=8, temperature=1.0))
  runs = {}
  for kv in (True, False):
    env = ModelEnv.from_config(model, model, tok, cfg, task="es", reward_cfg=None, kv_cache=kv)
    log = []
    for sp in (env.agent, env.simulator):
      inner = sp.generate_ids
      sp.generate_ids = (lambda prompts, seed, row_seeds=None, inner=inner, log=log:
                         log.append(inner(prompts, seed, row_seeds)) or log[-1])
    trees = search(env, es_roots(2), cfg)
    runs[kv] = (log, np.asarray(trees.value()), env.agent.cache.history + env.simulator.cache.history)
  assert runs[True][0] == runs[False][0] and len(runs[True][0]) > 4
  np.testing.assert_array_equal(runs[True][1], runs[False][1])
  later = runs[True][2][1:]
  assert sum(s.kept_tokens for s in later) > 0.5 * sum(s.prompt_tokens for s in later)
