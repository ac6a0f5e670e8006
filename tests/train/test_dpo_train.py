"""DPO end to end on sandbox-like pairs; reference cache; malformed pairs files."""
from __future__ import annotations


import numpy as np
import pytest

from engage_jax.train import dpo as dpo_train, dpo_loss as dpo_obj, pair_data, reference
from engage_jax.train.loop import read_metrics
from tests.train import _helpers as H

# Tolerances: at step 0 policy == reference, so the loss is log 2 and margins 0 up to fp32 rounding
# of the reference/policy sums (two programs; |sums| ~100, rounding ~1e-5, times beta): bounds 1e-4
# and 1e-5. Log-probs against another program or a float64 recomputation are bounded relative to
# their scale (rtol 1e-5) or absolutely at 1e-3 for sums of ~30 tokens (~1e-5 relative). Both hold
# on any x86-64 CPU; AVX2 vs AVX-512 only move the last ulps.

CFG = dict(steps=10, batch_size=8, learning_rate=3e-3, max_len=96, max_completion_len=32, min_bucket=32, rpo_alpha=0.0,
           checkpoint_every=0, **H.FAST)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("dpo")
  tok = H.tokenizer(str(root))
  path = H.write_pairs(str(root / "pairs.jsonl"), H.sandbox_pairs(16))
  return root, tok, path


def test_dpo_raises_accuracy_and_margin(setup, monkeypatch):
  root, tok, path = setup
  policy, ref = H.tiny_model(tok.vocab_size), H.tiny_model(tok.vocab_size)
  model, summary = dpo_train.train_dpo(policy, ref, [path], tok, CFG, str(root / "run"))
  recs = read_metrics(str(root / "run"))
  assert [r["step"] for r in recs] == list(range(1, 11))
  first, last = recs[0], recs[-1]
  for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "loss", "grad_norm", "learning_rate", "tokens_per_s"):
    assert key in last, key
  assert abs(first["loss"] - np.log(2)) < 1e-4 and first["rewards/margins"] == pytest.approx(0, abs=1e-5)
  tail = recs[-3:]
  assert np.mean([r["rewards/accuracies"] for r in tail]) > first["rewards/accuracies"] + 0.5
  assert np.mean([r["rewards/margins"] for r in tail]) > first["rewards/margins"] + 0.3
  assert np.mean([r["loss"] for r in tail]) < first["loss"] - 0.1
  assert summary["pairs"] == 16 and summary["step"] == 10
  # The reference log-probs are cached: a second run (fresh workdir state, same cache) reuses them.
  monkeypatch.setattr(reference, "compute_ref_logps", lambda *a, **k: pytest.fail("recomputed ref logps"))
  dpo_train.train_dpo(H.tiny_model(tok.vocab_size), ref, [path], tok, dict(CFG, steps=1), str(root / "run"),
                      resume=False)


def test_ref_logps_match_policy_at_start(setup):
  """Policy == ref at step 0 → ref cache equals a direct sequence_logps forward."""
  root, tok, path = setup
  pairs = pair_data.read_pair_files(path)
  buckets = pair_data.tokenize_pairs(pairs, tok, 96, 32, 32)
  assert len(buckets) == 1
  (pl, cl), arr = next(iter(buckets.items()))
  # The completion is exactly the assistant content + end-of-turn, prompt ends with the header.
  i = 0
  c = arr["chosen_ids"][i][arr["chosen_mask"][i] > 0].tolist()
  k = int(arr["pair_index"][i])
  assert c[-1] == tok.end_of_turn_id and tok.decode(c) == pairs[k]["chosen"][0]["content"]
  p = arr["prompt_ids"][i][arr["prompt_mask"][i] > 0].tolist()
  assert p == tok.apply_chat(pairs[k]["prompt"], add_generation_prompt=True)
  model = H.tiny_model(tok.vocab_size)
  ch, rj = reference.compute_ref_logps(model, buckets, 8)
  batch = {key: arr[key][:4] for key in pair_data.PAIR_KEYS}
  pc, pr, nc, nr = dpo_obj.sequence_logps(model, batch)
  np.testing.assert_allclose(np.asarray(pc), ch[arr["pair_index"][:4]], rtol=1e-5)
  # Full-sequence check of one row: sum of token log-probs of the completion.
  full = np.concatenate([arr["prompt_ids"][:1], arr["chosen_ids"][:1]], 1)
  att = np.concatenate([arr["prompt_mask"][:1], arr["chosen_mask"][:1]], 1)
  logits = np.asarray(model(full, attention_mask=att), np.float64)
  lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  want = sum(lp[0, pl + t - 1, full[0, pl + t]] for t in range(cl) if arr["chosen_mask"][0, t])
  assert abs(float(pc[0]) - want) < 1e-3


@pytest.mark.parametrize("content,match", [
    ("", "no pairs"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}\n{not json\n', ":2: invalid JSON"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}]}\n',
     ":1: missing field 'rejected'"),
    ('{"prompt": [], "chosen": [{"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}\n', ":1: 'prompt'"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}\n', ":1: 'chosen' must hold exactly one assistant"),
])
def test_malformed_pairs_file(tmp_path, content, match):
  path = tmp_path / "bad.jsonl"
  path.write_text(content)
  with pytest.raises(ValueError, match=match) as e:
    pair_data.read_pair_files([str(path)])
  assert str(path) in str(e.value)


def test_rpo_term_adds_alpha_times_chosen_nll(setup):
  """loss(rpo_alpha=a) = loss(0) + a × mean per-token NLL of the chosen completions."""
  from flax import nnx
  root, tok, path = setup
  buckets = pair_data.tokenize_pairs(pair_data.read_pair_files(path), tok, 96, 32, 32)
  (_, arr), = buckets.items()
  model = H.tiny_model(tok.vocab_size)
  batch = {key: arr[key][:4] for key in pair_data.PAIR_KEYS}
  batch.update(ref_chosen=np.zeros(4, np.float32), ref_rejected=np.zeros(4, np.float32),
               row_weight=np.ones(4, np.float32))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  base, m0 = dpo_obj.dpo_loss_fn(graphdef, rest, 0.1, "sigmoid", 0.0, 0.0)(params, batch)
  with_rpo, m1 = dpo_obj.dpo_loss_fn(graphdef, rest, 0.1, "sigmoid", 0.0, rpo_alpha=0.5)(params, batch)
  pc, _, nc, _ = dpo_obj.sequence_logps(model, batch)
  nll = float(np.mean(-np.asarray(pc) / np.asarray(nc)))
  assert float(m1["nll_loss"]) == pytest.approx(nll, rel=1e-5) and nll > 0
  assert float(with_rpo) == pytest.approx(float(base) + 0.5 * nll, rel=1e-5)
