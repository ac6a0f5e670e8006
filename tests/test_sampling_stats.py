"""Sampled (not greedy) decoding: the same seed gives the same tokens on any mesh, and the per-step
sampler draws from the temperature-scaled, top-k/top-p filtered, renormalised distribution."""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from engage_jax import sampling

# Tolerances: the draws come from JAX's threefry with fixed seeds (the same bits on every CPU); only
# the logits' last ulps differ between AVX2 and AVX-512, which can move a draw only at a probability
# boundary, so the chi-square p-values (> 1e-3 asked) are the same tests on any x86-64 CPU.

HERE = Path(__file__).resolve().parent


def test_sampled_generate_equal_across_meshes():
  """generate(temperature > 0, top_p < 1, top_k on/off, fixed seed) on a 1-device mesh == on 8
  forced host devices as (data, fsdp, tensor) = (4, 2, 1) with `mesh=` (batch padded 12 → 16) and
  as (1, 2, 4) with the inputs following the sharded state (how rollout/search call it). A subprocess, since the device
  count is fixed when jax starts."""
  r = subprocess.run([sys.executable, str(HERE / "sampled_mesh_check.py")], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and "SAMPLED_MESH_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


LOGITS = np.array([2.0, 1.5, 1.1, 0.6, 0.2, -0.3, -1.0, -2.5], np.float32)   # V = 8
N_DRAWS = 20_000


def _reference(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
  """The distribution the sampler should draw from, by the definition (float64, full sort):
  softmax(logits / T), keep the top-k (0 = all), renormalise, keep the smallest most-likely set
  whose mass reaches top_p, renormalise again. [V] probabilities, 0 outside the kept set."""
  z = logits.astype(np.float64) / temperature
  order = np.argsort(-z)
  k = top_k if top_k > 0 else z.size
  p = np.zeros_like(z)
  p[order[:k]] = np.exp(z[order[:k]] - z.max())
  p /= p.sum()
  cum = np.cumsum(p[order])
  n = int(np.searchsorted(cum, top_p)) + 1 if top_p < 1.0 else z.size
  out = np.zeros_like(z)
  out[order[:n]] = p[order[:n]]
  return out / out.sum()


# (T, top_p, top_k, tokens kept). Each setting keeps a set that a common mistake changes:
#   T=0.7, p=0.8: 3 kept (mass .73 → .87); filtering before the temperature (T=1) would keep 4.
#   T=1.5, p=0.85, k=5: 4 kept (mass .77 → .90 after renormalising the top 5); the top-p mass taken
#     without that renormalisation (.79 → .88) would keep 5, and ignoring top-k would too.
#   T=1.3, p=1: plain temperature sampling ("sample" mode), all 8.
CASES = [(0.7, 0.8, 0, 3), (1.5, 0.85, 5, 4), (1.3, 1.0, 0, 8)]


@pytest.mark.parametrize("temperature,top_p,top_k,n_kept", CASES)
def test_sampler_frequencies_match_filtered_distribution(temperature, top_p, top_k, n_kept):
  """20k draws of `sampling.sample_logits` (the per-step sampler of `generate`, in the mode
  `generate` picks) in one jitted call: no draw outside the kept set, and the counts of the kept
  tokens pass a chi-square test against the renormalised filtered distribution (fixed seed)."""
  expected = _reference(LOGITS, temperature, top_p, top_k)
  kept = expected > 0
  assert kept.sum() == n_kept
  mode = sampling._mode(temperature, top_p, top_k)
  assert mode == ("sample" if top_p == 1.0 and top_k == 0 else "filter")
  draw = jax.jit(functools.partial(sampling.sample_logits, mode=mode))
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (N_DRAWS, LOGITS.size))
  tokens = np.asarray(draw(logits, jax.random.key(20240), jnp.float32(temperature),
                           jnp.float32(top_p), jnp.int32(top_k)))
  assert tokens.shape == (N_DRAWS,)
  counts = np.bincount(tokens, minlength=LOGITS.size)
  assert counts.size == LOGITS.size and counts[~kept].sum() == 0, (counts, expected)
  chi2, pvalue = stats.chisquare(counts[kept], N_DRAWS * expected[kept])
  assert pvalue > 1e-3, (f"T={temperature} top_p={top_p} top_k={top_k}: chi2={chi2:.1f} "
                         f"p={pvalue:.2e}\ncounts   {counts}\nexpected {np.round(N_DRAWS * expected)}")


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
  """Chi-square p-value of `counts` against `probs` ([V]); categories expected < 5 times are merged."""
  expected = counts.sum() * probs
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  return float(stats.chisquare(obs[keep], exp[keep]).pvalue)


@pytest.mark.parametrize("temperature,top_k", [(0.6, 0), (1.7, 0), (0.6, 24)])
def test_generate_first_token_follows_the_tempered_model_distribution(temperature, top_k):
  """4096 copies of one prompt through `sampling.generate` (one new token, fixed seed): the first
  tokens pass a chi-square test against softmax(logits / T) of the model's own forward pass
  (float64), so T is applied exactly once, on the "sample" path (top_k 0) and on the "filter" path
  (top_k = V keeps every token). With these logits (std ~1.5) a T applied twice or not at all
  gives p < 1e-30."""
  from flax import nnx

  from engage_jax.models import CausalLM, ModelConfig
  cfg = ModelConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
  model = CausalLM(cfg, rngs=nnx.Rngs(5))
  model.lm_head.kernel[...] = model.lm_head.kernel[...] * 12.0  # spread the logits out
  prompt = [3, 9, 14, 1, 7]
  logits = np.asarray(model(jnp.asarray([prompt]))[0, -1], np.float64)
  assert 1.2 < logits.std() < 3.0, logits.std()
  z = logits / temperature
  probs = np.exp(z - z.max())
  probs /= probs.sum()
  out = sampling.generate(model, [prompt] * 4096, max_new_tokens=1, temperature=temperature, top_k=top_k,
                          seed=11, stop_token_ids=())
  assert all(len(o) == 1 for o in out)
  counts = np.bincount([o[0] for o in out], minlength=cfg.vocab_size)
  p = _chi2_pvalue(counts, probs)
  assert p > 1e-3, (temperature, top_k, p, counts, np.round(4096 * probs))
