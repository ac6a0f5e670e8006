"""Shared fixtures for the training tests: a sandbox BPE tokenizer, tiny models, pairs files."""
from __future__ import annotations

import json
import os
import random

import jax.numpy as jnp
from flax import nnx

from engage_jax.data import chat, sandbox, sft
from engage_jax.train import loop
from engage_jax.models import CausalLM, ModelConfig
from engage_jax.tokenizer import ChatTokenizer, train_bpe

FAST = dict(progress=False, log_every=1, eval_at_start=True, warmup_steps=2)


def tokenizer(root: str, n_dialogues: int = 40) -> ChatTokenizer:
  """A 400-token BPE over the ES sandbox world (cached under root/tok)."""
  d = os.path.join(root, "tok")
  if os.path.exists(os.path.join(d, "tokenizer.json")):
    return ChatTokenizer.load(d)
  dl = sandbox.generate("es", n_dialogues, 0)
  return train_bpe(list(sft.tokenizer_texts(dl)) + sandbox.all_texts("es"), 400, d)


def tiny_model(vocab: int, seed: int = 0, layers: int = 2, d: int = 64) -> CausalLM:
  cfg = ModelConfig(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2)
  return CausalLM(cfg, rngs=nnx.Rngs(seed))


def poisoned_lm_loss(vocab: int = 64):
  """(params, loss_fn) of a 1-layer tiny model whose SFT loss is NaN on a batch with "poison" [B]
  set (its first row), for the non-finite-step tests."""
  graphdef, params, rest = nnx.split(tiny_model(vocab, d=32, layers=1), nnx.Param, ...)
  base = loop.lm_loss_fn(graphdef, rest)

  def loss_fn(p, batch):
    loss, m = base(p, batch)
    return jnp.where(batch["poison"][0] > 0, jnp.nan, loss), m

  return params, loss_fn


def sft_arrays(tok, n_train: int = 32, n_eval: int = 8, max_len: int = 128):
  dl = sandbox.generate("es", n_train + n_eval, 0)
  tr, _ = sft.build_arrays(dl[:n_train], tok, "agent", max_len, buckets=(max_len,))
  ev, _ = sft.build_arrays(dl[n_train:], tok, "agent", max_len, buckets=(max_len,))
  return tr, ev


def sandbox_pairs(n: int, seed: int = 0) -> list[dict]:
  """ES pairs: prompt = the user's opening; chosen = a HELPFUL-strategy reply, rejected = another."""
  rng = random.Random(seed)
  out = []
  for i, cond in enumerate(sandbox.random_conditions("es", n, seed)):
    turns = sandbox.opening_turns("es", cond)
    best = sandbox.HELPFUL[cond["emotion_type"]]
    worse = rng.choice([s for s in sandbox.ES_STRATEGIES if s != best])
    out.append({"prompt": chat.agent_messages("es", turns),
                "chosen": [{"role": "assistant", "content": rng.choice(sandbox.ES_TEMPLATES[best])}],
                "rejected": [{"role": "assistant", "content": rng.choice(sandbox.ES_TEMPLATES[worse])}],
                "meta": {"condition": cond, "index": i}})  # two draws may be equal: pair_data refuses repeated rows
  return out


def write_pairs(path: str, pairs: list[dict]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for p in pairs:
      f.write(json.dumps(p) + "\n")
  return path
