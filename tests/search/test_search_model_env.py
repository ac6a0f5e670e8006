"""ModelEnv with tiny random models: one batched generate call per role per round; log-probs."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engage_jax.search import ModelEnv, SearchConfig, search
from engage_jax.search.env import sequence_logprobs

from tests.search._search_helpers import es_roots

HAVE_ROLLOUT = importlib.util.find_spec("engage_jax.rollout") is not None


def _tiny_model(vocab=300, seed=0, eos=None):
  from flax import nnx
  from engage_jax.models import CausalLM, ModelConfig
  cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos)
  return CausalLM(cfg, rngs=nnx.Rngs(seed))


def test_sequence_logprobs_matches_unpadded_forward():
  import jax
  import jax.numpy as jnp
  model = _tiny_model(vocab=50)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
  completions = [[11, 12], [13], [14, 15, 16]]
  got = sequence_logprobs(model, prompts, completions, bucket=16)
  for p, c, g in zip(prompts, completions, got):
    ids = jnp.asarray([p + c])
    logp = jax.nn.log_softmax(model(ids).astype(jnp.float32), axis=-1)[0]
    want = sum(float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(c))
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAVE_ROLLOUT, reason="engage_jax.rollout (Speaker, simulate) is not "
                    "written yet; ModelEnv is coded against docs/CONTRACTS.md")
def test_model_env_batches_the_frontier(tmp_path, monkeypatch):
  from engage_jax import sampling
  from engage_jax.data import sandbox
  from engage_jax.tokenizer import train_bpe
  tok = train_bpe(sandbox.all_texts("es"), 300, str(tmp_path / "tok"))
  agent = _tiny_model(tok.vocab_size, 1, tok.eos_id)
  sim = _tiny_model(tok.vocab_size, 2, tok.eos_id)
  cfg = SearchConfig(k=2, budget=2, max_turns=2, max_depth=2, prune_similarity=None,
                     max_new_tokens=4, sim_max_new_tokens=4, selection="puct")
  env = ModelEnv.from_config(agent, sim, tok, cfg, task="es", reward_cfg=None, max_prompt_len=64)
  calls = []
  real = sampling.generate

  def counting(model, prompts, *a, **kw):
    calls.append((model is agent, len(prompts)))
    return real(model, prompts, *a, **kw)

  monkeypatch.setattr(sampling, "generate", counting)
  exps = env.expand([r for r in es_roots(3)], 2, seed=0)
  assert [len(row) for row in exps] == [2, 2, 2]
  assert calls == [(True, 6), (False, 6)]
  assert all(e.agent_ids and np.isfinite(e.agent_logprob) for row in exps for e in row)
  calls.clear()
  trees = search(env, es_roots(3), cfg)
  assert int(trees.expansions.sum()) == 6
  # the first round's expand: one agent call over all 3 trees x k=2 candidates
  assert calls[:2] == [(True, 6), (False, 6)]
  assert np.isfinite(trees.value()[:, 0]).all()
