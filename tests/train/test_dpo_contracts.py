"""DPO details that would silently change results: IPO's length normalisation, rows of weight 0,
and the reference log-prob cache being recomputed when the reference model or the pairs change."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from engage_jax.train import dpo as dpo_train, dpo_loss, pair_data, reference
from tests.numerics import rel_norm_diff
from tests.train import _helpers as H

CFG = dict(steps=1, batch_size=8, learning_rate=1e-3, max_len=96, max_completion_len=32, min_bucket=32,
           checkpoint_every=0, **H.FAST)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("dpo_contracts")
  tok = H.tokenizer(str(root))
  pairs = H.sandbox_pairs(8)
  return root, tok, pairs


def _batch(tok, pairs, weights):
  (_, arr), = pair_data.tokenize_pairs(pairs, tok, 96, 32, 32).items()
  order = np.argsort(arr["pair_index"])[:len(weights)]
  batch = {k: arr[k][order] for k in pair_data.PAIR_KEYS}
  rng = np.random.default_rng(3)
  batch.update(ref_chosen=rng.normal(-40, 4, len(weights)).astype(np.float32),
               ref_rejected=rng.normal(-40, 4, len(weights)).astype(np.float32),
               row_weight=np.asarray(weights, np.float32))
  return batch


def test_ipo_is_length_normalised_and_rows_of_weight_0_count_for_nothing(setup):
  """The IPO loss of a batch is the weighted mean of ((πc/nc - πr/nr) - (refc/nc - refr/nr) - 1/2β)²
  with n the completion lengths (TRL's per-token average), computed here in float64 from the
  model's sequence log-probs; and rows of weight 0 change neither the loss nor the gradient, whatever
  they hold."""
  _, tok, pairs = setup
  beta = 0.1
  batch = _batch(tok, pairs, [1, 1, 0, 1, 1, 0])
  model = H.tiny_model(tok.vocab_size, layers=1, d=32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fn = dpo_loss.dpo_loss_fn(graphdef, rest, beta, "ipo", 0.0, 0.0)
  loss, _ = fn(params, batch)
  pc, pr, nc, nr = (np.asarray(x, np.float64) for x in dpo_loss.sequence_logps(model, batch))
  assert not np.array_equal(nc, nr)  # completions of other lengths, so the normalisation matters
  rc, rr, w = (np.asarray(batch[k], np.float64) for k in ("ref_chosen", "ref_rejected", "row_weight"))
  delta = (pc / nc - pr / nr) - (rc / nc - rr / nr)
  want = float(np.sum(w * (delta - 1 / (2 * beta)) ** 2) / np.sum(w))
  unnormalised = float(np.sum(w * ((pc - pr) - (rc - rr) - 1 / (2 * beta)) ** 2) / np.sum(w))
  # fp32 sums of ~30 log-probs of magnitude ~6: relative to the loss's scale on any CPU
  assert float(loss) == pytest.approx(want, rel=1e-4), (float(loss), want)
  assert abs(unnormalised - want) > 0.1 * want  # the check could tell the two apart

  # rows 2 and 5 (weight 0) rewritten with other tokens and absurd reference log-probs
  other = dict(batch)
  for k in ("chosen_ids", "rejected_ids", "prompt_ids"):
    other[k] = batch[k].copy()
    other[k][[2, 5]] = batch[k][[0, 1]][:, ::-1]
  other["ref_chosen"] = batch["ref_chosen"].copy()
  other["ref_chosen"][[2, 5]] = [1e4, -1e4]
  grad_fn = lambda b: nnx.to_flat_state(jax.grad(lambda p: fn(p, b)[0])(params))
  for loss_type in ("ipo", "sigmoid"):
    f = dpo_loss.dpo_loss_fn(graphdef, rest, beta, loss_type, 0.0, 0.0)
    (la, ma), (lb, mb) = f(params, batch), f(params, other)
    # the real rows are the same computation; other rows of a batch may change its rounding
    assert float(lb) == pytest.approx(float(la), rel=1e-5), loss_type
    for k in ma:
      assert float(mb[k]) == pytest.approx(float(ma[k]), rel=1e-5, abs=1e-6), (loss_type, k)
  ga, gb = grad_fn(batch), grad_fn(other)
  assert max(rel_norm_diff(b[...], a[...]) for (_, a), (_, b) in zip(ga, gb)) < 1e-5


def _ref_cache(root, name):
  with np.load(root / name / "ref_logps_train.npz") as z:
    return z["chosen"].copy(), z["rejected"].copy()


def test_reference_cache_is_recomputed_when_the_reference_or_the_pairs_change(setup, tmp_path, monkeypatch):
  """One workdir, train_dpo run again with: the same reference and pairs (cache reused), another
  reference, the same reference with one weight nudged, and pairs with one chosen text changed:
  each change recomputes the cache, whose values are then the new reference's on the new pairs."""
  _, tok, pairs = setup
  path = H.write_pairs(str(tmp_path / "pairs.jsonl"), pairs)
  calls = []
  real = reference.compute_ref_logps
  monkeypatch.setattr(reference, "compute_ref_logps", lambda *a, **k: calls.append(1) or real(*a, **k))

  def run(ref, pairs_path=path):
    calls.clear()
    dpo_train.train_dpo(H.tiny_model(tok.vocab_size, layers=1, d=32), ref, [pairs_path], tok, CFG,
                        str(tmp_path / "wd"), resume=False)
    return len(calls), _ref_cache(tmp_path, "wd")

  def direct(ref, pairs_list):
    return real(ref, pair_data.tokenize_pairs(pairs_list, tok, 96, 32, 32), 8)

  ref_a = H.tiny_model(tok.vocab_size, seed=1, layers=1, d=32)
  n, first = run(ref_a)
  assert n == 1
  n, again = run(ref_a)
  assert n == 0 and all(np.array_equal(x, y) for x, y in zip(first, again))

  ref_b = H.tiny_model(tok.vocab_size, seed=2, layers=1, d=32)
  n, got = run(ref_b)
  assert n == 1
  want = direct(ref_b, pairs)
  # same program, same machine: the cache holds exactly what the reference computes
  assert all(np.array_equal(x, y) for x, y in zip(got, want))
  assert not np.allclose(got[0], first[0])

  w = ref_b.layers.mlp.down_proj.kernel      # stacked [L, F, D]
  w[...] = w[...].at[0, 0, 0].add(1e-3)          # one weight of 8k moved by 1e-3
  n, nudged = run(ref_b)
  assert n == 1 and all(np.array_equal(x, y) for x, y in zip(nudged, direct(ref_b, pairs)))

  edited = json.loads(json.dumps(pairs))
  edited[3]["chosen"][0]["content"] = pairs[5]["rejected"][0]["content"]
  path2 = H.write_pairs(str(tmp_path / "pairs.jsonl"), edited)  # same file name, new content
  n, got = run(ref_b, path2)
  assert n == 1
  want = direct(ref_b, edited)
  assert all(np.array_equal(x, y) for x, y in zip(got, want))
  assert got[0][3] != nudged[0][3]
