"""from_pretrained / save_pretrained against transformers' PyTorch logits (fp32)."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engage_jax import models
from tests.models.hf_reference import CASES, WINDOW, WINDOW_CASES, make_hf_model

# Tolerances: ours and torch are two programs for one function, so logits agree to a few fp32 ulps
# of their scale on any x86-64 CPU (AVX2 or AVX-512 only change which ulps). `scaled_max_error`
# (tests/numerics.py) bounds the difference absolutely for logits of order <= 1 (these seeded tiny
# models) and relative to the largest logit beyond; 1e-4 is >= 100x the rounding either way.
# Reloading our own export is the same program on the same weights: compared exactly.
from tests.numerics import scaled_max_error


def _padded_batch(vocab: int, seed: int = 0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, (3, 11))
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padded row
  mask[2, 7:] = 0  # right padded row
  ids = np.where(mask == 1, ids, 0)
  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  return ids, mask, positions


def _torch_logits(model, ids, mask, positions):
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
  ref_model = make_hf_model(case, tmp_path)
  model = models.from_pretrained(tmp_path, dtype=jnp.float32)
  ids, mask, positions = _padded_batch(model.config.vocab_size)
  ref = _torch_logits(ref_model, ids, mask, positions)
  out = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  real = mask.astype(bool)
  assert out.shape == ref.shape
  assert scaled_max_error(out, ref, real) < 1e-4


@pytest.mark.parametrize("case", sorted(WINDOW_CASES))
def test_sliding_window_shorter_than_the_sequence_matches_transformers(case, tmp_path):
  """Mistral / Qwen2 with a window of 5 over 16-token rows (left- and right-padded rows too): the
  logits equal transformers' (the same bound as the full-attention cases), are far from the same
  weights without a window, and the window survives save_pretrained -> transformers."""
  ref_model = make_hf_model(case, tmp_path / "src")
  model = models.from_pretrained(tmp_path / "src", dtype=jnp.float32)
  assert model.config.sliding_window == WINDOW
  rng = np.random.RandomState(3)
  ids = rng.randint(3, model.config.vocab_size, (3, 16))
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  mask[2, 13:] = 0
  ids = np.where(mask == 1, ids, 0)
  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  real = mask.astype(bool)
  ref = _torch_logits(ref_model, ids, mask, positions)
  out = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert scaled_max_error(out, ref, real) < 1e-4
  full = models.from_pretrained(tmp_path / "src", dtype=jnp.float32)
  full.layers.self_attn.window = None  # the stacked layers share one module
  no_window = np.asarray(full(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert scaled_max_error(no_window, ref, real) > 100 * scaled_max_error(out, ref, real)
  np.testing.assert_array_equal(no_window[:, :WINDOW][real[:, :WINDOW]], out[:, :WINDOW][real[:, :WINDOW]])
  models.save_pretrained(model, tmp_path / "out")
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert scaled_max_error(_torch_logits(again, ids, mask, positions), ref, real) < 1e-4


@pytest.mark.parametrize("case", ["llama_gqa_llama3rope", "qwen2_tied"])
def test_save_pretrained_round_trip(case, tmp_path):
  make_hf_model(case, tmp_path / "src")
  model = models.from_pretrained(tmp_path / "src")
  models.save_pretrained(model, tmp_path / "out")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  ids, mask, positions = _padded_batch(model.config.vocab_size, seed=1)
  ref = _torch_logits(reloaded, ids, mask, positions)
  out = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert scaled_max_error(out, ref, mask.astype(bool)) < 1e-4
  again = models.from_pretrained(tmp_path / "out")
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), attention_mask=jnp.asarray(mask))), out)


def test_sharded_checkpoint_index(tmp_path):
  ref_model = make_hf_model("llama_tied", tmp_path / "src")
  ref_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
  a = models.from_pretrained(tmp_path / "src")
  b = models.from_pretrained(tmp_path / "sharded")
  ids = jnp.asarray(np.arange(12).reshape(2, 6) + 3)
  np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))


def test_bf16_params_run(tmp_path):
  make_hf_model("llama_tied", tmp_path)
  model = models.from_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert model.embed_tokens[...].dtype == jnp.bfloat16
  ref = models.from_pretrained(tmp_path)
  ids = jnp.asarray(np.arange(12).reshape(2, 6) + 3)
  out, exp = np.asarray(model(ids)), np.asarray(ref(ids))
  assert out.dtype == np.float32 and np.isfinite(out).all()
  # relative to the logits' scale (this model's std is ~0.17, so an absolute 0.1 let a broken
  # path through); bf16 rounding (2^-8 relative) measured 0.026 std here
  assert np.abs(out - exp).max() < 0.08 * exp.std(), (np.abs(out - exp).max(), exp.std())


# ------------------------------------------------------------------ bad input
def test_unknown_architecture_is_refused(tmp_path):
  make_hf_model("llama_tied", tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["model_type"] = "gpt2"
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config.json: unsupported model_type 'gpt2'"):
    models.from_pretrained(tmp_path)


def test_corrupt_safetensors_is_refused(tmp_path):
  make_hf_model("llama_tied", tmp_path)
  path = tmp_path / "model.safetensors"
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(ValueError, match=r"model.safetensors: cannot read safetensors file"):
    models.from_pretrained(tmp_path)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  make_hf_model("llama_tied", tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = load_file(path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path)
  with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    models.from_pretrained(tmp_path)
  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
  save_file(tensors, path)
  with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \(3, 3\), expected \(96, 64\)"):
    models.from_pretrained(tmp_path)


def test_pickle_checkpoints_are_not_loaded(tmp_path):
  make_hf_model("llama_tied", tmp_path)
  (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="pickle"):
    models.from_pretrained(tmp_path)
