"""DPO chosen on held-out pairs: the tree-disjoint split, the per-epoch held-out curves, and the
sweep's choice of learning rate / β / epochs."""
from __future__ import annotations

import json
import os
import random

import pytest

from engage_jax.train import dpo_sweep, pair_data
from tests.train import _helpers as H

CFG = dict(num_epochs=1, batch_size=4, learning_rate=3e-3, max_len=96, max_completion_len=32, min_bucket=32,
           checkpoint_every=0, **H.FAST)


def _tree_pairs(n_trees: int, per_tree: int) -> list[dict]:
  return [{"prompt": [{"role": "user", "content": f"t{t}"}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": f"b{i}"}], "meta": {"condition_id": f"c{t}", "tree_id": t % 3}}
          for t in range(n_trees) for i in range(per_tree)]


def test_split_heldout_by_tree_is_deterministic_and_disjoint():
  pairs = _tree_pairs(20, 3)
  train, held = pair_data.split_heldout(pairs, 0.1)
  keys = lambda idx: {pairs[i]["meta"]["condition_id"] for i in idx}
  assert len(keys(held)) == 2 and len(held) == 6 and not keys(train) & keys(held)
  assert sorted(train + held) == list(range(60))
  shuffled = pairs[:]
  random.Random(0).shuffle(shuffled)
  _, held2 = pair_data.split_heldout(shuffled, 0.1)
  assert {shuffled[i]["meta"]["condition_id"] for i in held2} == keys(held)     # by tree, not by order
  assert pair_data.split_heldout(pairs, 0.0) == (list(range(60)), [])
  assert pair_data.split_heldout(pairs[:3], 0.5) == ([0, 1, 2], [])            # one tree: nothing held out
  assert len(keys(pair_data.split_heldout(pairs, 0.01)[1])) == 1                # at least one tree
  with pytest.raises(ValueError, match="fraction"):
    pair_data.split_heldout(pairs, 1.0)


def test_choose_prefers_accuracy_then_log_ratio_then_fewer_epochs():
  pt = lambda e, a, m: {"epoch": e, "step": 2 * e, "accuracy": a, "margin": m}
  runs = [{"learning_rate": 1e-3, "beta": 0.1, "curve": [pt(0, 1.0, 0.0), pt(1, 0.75, 0.05), pt(2, 0.75, 0.05)]},
          {"learning_rate": 1e-4, "beta": 0.5, "curve": [pt(0, 0.0, 0.0), pt(1, 0.75, 0.2), pt(2, 0.5, 0.3)]}]
  best = dpo_sweep.choose(runs)
  # epoch 0 never counts; 0.75 ties; log-ratio 0.05/0.1 = 0.5 > 0.2/0.5 = 0.4; then the earlier epoch
  assert (best["learning_rate"], best["beta"], best["num_epochs"]) == (1e-3, 0.1, 1)
  assert best["log_ratio"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="no held-out points"):
    dpo_sweep.choose([{"learning_rate": 1, "beta": 1, "curve": [pt(0, 1.0, 0.0)]}])


def test_sweep_held_out_curves_and_choice(tmp_path):
  """Sandbox pairs (chosen = the condition's helpful strategy): at lr 3e-3 the held-out accuracy
  and margin grow over epochs, at lr 1e-6 they barely move; the sweep picks 3e-3."""
  tok = H.tokenizer(str(tmp_path))
  path = H.write_pairs(str(tmp_path / "pairs.jsonl"), H.sandbox_pairs(24))
  ref = H.tiny_model(tok.vocab_size)
  out = dpo_sweep.sweep(lambda: H.tiny_model(tok.vocab_size), ref, [path], tok, CFG, workdir=str(tmp_path / "sw"),
                        learning_rates=(3e-3, 1e-6), betas=(0.1,), num_epochs=3, heldout_fraction=0.25)
  fast, slow = out["runs"]
  h = fast["heldout"]
  assert h["pairs"] >= 1 and h["train_pairs"] + h["pairs"] == 24 and h["trees"] >= 1
  assert [p["epoch"] for p in fast["curve"]] == [0.0, 1.0, 2.0, 3.0]
  assert fast["curve"][0]["accuracy"] == 0.0 and fast["curve"][0]["margin"] == pytest.approx(0.0, abs=1e-5)
  assert fast["curve"][-1]["accuracy"] >= 0.75 and fast["curve"][-1]["margin"] > 0.2
  assert abs(slow["curve"][-1]["margin"]) < 0.05
  assert out["best"]["learning_rate"] == 3e-3 and out["best"]["num_epochs"] >= 1
  run_dir = tmp_path / "sw" / "lr0.003_beta0.1"
  train = pair_data.read_pair_files(str(run_dir / "pairs_train.jsonl"))
  held = pair_data.read_pair_files(str(run_dir / "pairs_heldout.jsonl"))
  assert not {pair_data.tree_key(p) for p in train} & {pair_data.tree_key(p) for p in held}
  saved = json.loads((run_dir / "heldout_curve.json").read_text())
  assert saved["points"] == fast["curve"]
  assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["best"] == out["best"]
  assert os.path.exists(tmp_path / "sw" / "sweep.png") and os.path.exists(run_dir / "heldout_curve.png")
