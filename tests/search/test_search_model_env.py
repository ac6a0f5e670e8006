"""ModelEnv with tiny random models: one batched generate call per role per round; log-probs."""
from __future__ import annotations

import numpy as np
import pytest

from engage_jax.data import chat
from engage_jax.data.dialogue import Dialogue, Turn
from engage_jax.search import ModelEnv, SearchConfig, search
from engage_jax.sampling import SamplingParams, sequence_logprobs

from tests.search._search_helpers import es_roots

def _tiny_model(vocab=300, seed=0, eos=None):
  from flax import nnx
  from engage_jax.models import CausalLM, ModelConfig
  cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos)
  return CausalLM(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(tokenizer, agent, simulator): BPE on the sandbox ES texts, two 1-layer random models."""
  from engage_jax.data import sandbox
  from engage_jax.tokenizer import train_bpe
  tok = train_bpe(sandbox.all_texts("es"), 300, str(tmp_path_factory.mktemp("tok")))
  return tok, _tiny_model(tok.vocab_size, 1, tok.eos_id), _tiny_model(tok.vocab_size, 2, tok.eos_id)


def test_sequence_logprobs_matches_right_padded_forward(tiny):
  import jax
  from flax import nnx
  _, model, _ = tiny
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
  completions = [[11, 12], [13], [14, 15, 16]]
  got = sequence_logprobs(model, prompts, completions)
  # reference: right padding (harmless for a causal model), default positions, one jitted call
  seqs = [p + c for p, c in zip(prompts, completions)]
  ids = np.zeros((3, max(map(len, seqs))), np.int32)
  for r, x in enumerate(seqs):
    ids[r, :len(x)] = x
  logp = np.asarray(nnx.jit(lambda m, x: jax.nn.log_softmax(m(x), axis=-1))(model, ids))
  for r, (p, c) in enumerate(zip(prompts, completions)):
    want = sum(float(logp[r, len(p) - 1 + i, tok]) for i, tok in enumerate(c))
    # two programs (bucketed left-padded batch vs this right-padded one) summing <= 3 fp32 log-probs
    # of magnitude ~log V: rounding ~1e-6 of that scale on any x86-64 CPU; bound relative + floor
    np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-4)


def test_model_env_batches_the_frontier(tiny, monkeypatch):
  from engage_jax import sampling
  from engage_jax.chat_cache import ConversationCache
  tok, agent, sim = tiny
  cfg = SearchConfig(k=2, budget=2, max_turns=2, max_depth=2, prune_similarity=None,
                     agent_sampling=SamplingParams(max_new_tokens=4, temperature=0.9, top_p=0.9),
                     simulator_sampling=SamplingParams(max_new_tokens=4, temperature=0.3),
                     selection="puct")
  env = ModelEnv.from_config(agent, sim, tok, cfg, task="es", reward_cfg=None, max_prompt_len=64)
  calls = []
  real = sampling.generate

  def counting(model, prompts, *a, **kw):
    calls.append((model is agent, len(prompts)))
    return real(model, prompts, *a, **kw)

  real_cached = ConversationCache.generate

  def counting_cached(self, model, prompts, *a, **kw):  # the Speakers' path with kv_cache (default)
    calls.append((model is agent, len(prompts)))
    return real_cached(self, model, prompts, *a, **kw)

  monkeypatch.setattr(sampling, "generate", counting)
  monkeypatch.setattr(ConversationCache, "generate", counting_cached)
  exps = env.expand(es_roots(2), 2, seed=0)
  assert [len(row) for row in exps] == [2, 2]
  assert calls == [(True, 4), (False, 4)]
  assert all(e.agent_ids and np.isfinite(e.agent_logprob) for row in exps for e in row)
  calls.clear()
  trees = search(env, es_roots(2), cfg)
  assert int(trees.expansions.sum()) == 4
  # the first round's expand: one agent call over both trees x k=2 candidates
  assert calls[:2] == [(True, 4), (False, 4)]
  assert np.isfinite(trees.value()[:, 0]).all()


def test_final_rewards_of_ended_chats():
  import types
  from engage_jax.data.dialogue import Dialogue, Turn
  asked = []

  def outcome(msgs, seed, row_seeds=None):
    asked.extend(msgs)
    return ["I will donate $0.50." for _ in msgs]

  fake = types.SimpleNamespace(tokenizer=None, generate=outcome)
  es = ModelEnv(fake, fake, task="es", reward_cfg=None, max_turns=3)
  turns = [Turn("user", "hi"), Turn("agent", "that sounds hard"),
           Turn("user", "thank you , i feel much better now .")]
  d = Dialogue("x", "es", turns, {"emotion_type": "a", "problem_type": "b", "situation": "c"})
  assert es.final_rewards([d, Dialogue("y", "es", turns[:2] + [Turn("user", "meh")], d.condition)],
                          0) == [1.0, 0.0]
  assert not asked
  p4g = ModelEnv(fake, fake, task="p4g", reward_cfg={"donation_cap": 2.0}, max_turns=3)
  dp = Dialogue("p", "p4g", [Turn("agent", "donate?"), Turn("user", "ok bye")], {"m": "x"})
  assert p4g.final_rewards([dp], 0) == [0.5]
  assert asked[0][-1]["content"].startswith("[OUTCOME]") and "[END]" in asked[0][-2]["content"]


class _Vocab:
  """A tokenizer double: one id per distinct text (decode joins texts)."""

  def __init__(self):
    self.texts: list[str] = []

  def id(self, text: str) -> int:
    if text not in self.texts:
      self.texts.append(text)
    return self.texts.index(text)

  def decode(self, ids) -> str:
    return " ".join(self.texts[i] for i in ids)


class _EchoSpeaker:
  """A Speaker double: the prompt is the id of the last message; generate_ids answers each prompt
  with "<role> <n> re: <that message>" (n counts the calls for that message, so siblings differ);
  the simulator ends the chat (END_MARKER) when the agent's turn came from `ending`."""

  def __init__(self, role: str, vocab: _Vocab, ending: str = ""):
    self.role, self.tokenizer, self.ending, self.seen = role, vocab, ending, {}
    self.model = None

  def prompt(self, messages):
    return [self.tokenizer.id(messages[-1]["content"])]

  def generate_ids(self, prompts, seed, row_seeds=None):
    out = []
    for p in prompts:
      text = self.tokenizer.texts[p[0]]
      n = self.seen[text] = self.seen.get(text, 0) + 1
      reply = f"{self.role} {n} re: {text}"
      if self.ending and self.ending in text:
        reply = "that really helps, I feel much better " + chat.END_MARKER
      out.append([self.tokenizer.id(reply)])
    return out


def test_expand_children_belong_to_their_parent():
  """ModelEnv.expand over 3 histories, k=2, with echoing speakers: child j of history i answers
  history i's last user turn, the simulator's reply in the same child answers that child's agent
  turn, ids and texts agree, and only the children of history 1 (whose agent replies the simulator
  ends) are terminal, with the ES reward of their own reply."""
  vocab = _Vocab()
  agent, sim = _EchoSpeaker("agent", vocab), _EchoSpeaker("user", vocab, ending="re: history 1")
  env = ModelEnv(agent, sim, task="es", reward_cfg=None, max_turns=4, logprobs=False)
  hist = [Dialogue(f"h{i}", "es", [Turn("user", f"history {i}")], {"emotion_type": "sadness"}) for i in range(3)]
  out = env.expand(hist, 2, seed=0)
  assert [len(c) for c in out] == [2, 2, 2]
  for i, children in enumerate(out):
    assert sorted(e.agent.text for e in children) == [f"agent {n} re: history {i}" for n in (1, 2)]
    for e in children:
      assert e.agent.text == vocab.decode(e.agent_ids) and e.agent.role == "agent"
      if i == 1:
        assert e.terminal and e.reward == 1.0 and "[END]" not in e.user.text, e
      else:
        assert not e.terminal and e.reward is None
        assert e.user.text == f"user 1 re: {e.agent.text}" == vocab.decode(e.user_ids)
