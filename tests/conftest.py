"""Shared test fixtures: the real-data directory and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engage_jax import compile_cache

REPO = Path(__file__).resolve().parents[1]
compile_cache.enable()  # reruns of the suite (and the launchers it starts) reuse compiled programs


def shared_data_dir() -> Path:
  """../shared/data beside the repo (or $ENGAGE_DATA_DIR)."""
  return Path(os.environ.get("ENGAGE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture
def data_dir() -> Path:
  d = shared_data_dir()
  if not d.is_dir():
    pytest.skip(f"real data not found at {d} (set ENGAGE_DATA_DIR); skipping real-data test")
  return d


@pytest.fixture(scope="session")
def sandbox_chat_tok(tmp_path_factory):
  """A 400-token BPE over sandbox ES and P4G turns and the chat markers (rollout and cache tests)."""
  from engage_jax.data import chat, sandbox
  from engage_jax.tokenizer import train_bpe
  texts = [t.text for d in sandbox.generate("es", 40, 0) + sandbox.generate("p4g", 40, 0) for t in d.turns]
  texts += [chat.END_MARKER, chat.OUTCOME_REQUEST, "I will donate $0.50."]
  return train_bpe(texts, 400, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def sandbox_chat_model(sandbox_chat_tok):
  """A 1-layer random CausalLM over `sandbox_chat_tok`'s vocabulary (only sampled from, never trained)."""
  from flax import nnx
  from engage_jax.models import CausalLM, ModelConfig
  cfg = ModelConfig(vocab_size=sandbox_chat_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
  return CausalLM(cfg, rngs=nnx.Rngs(0))
