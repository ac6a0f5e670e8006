"""The search's preference data as `datasets` (engage_jax/pairs_dataset.py, launch/export.py
--dataset_out): the round trip search → export → load_from_disk → DPO's pairs and arrays, the kto
labelling rule, and TRL's DPOTrainer / KTOTrainer reading both formats (tokenization only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from engage_jax import pairs_dataset
from engage_jax.data.chat import agent_messages
from engage_jax.data.dialogue import Turn
from engage_jax.search import SearchConfig, run_search
from engage_jax.search.testing import BanditEnv
from engage_jax.train import dpo as dpo_train, pair_data
from engage_jax.train.loop import read_metrics

from tests.search._search_helpers import ARMS, es_roots
from tests.train import _helpers as H

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir as the pipeline's search stage leaves it: search/trees shards, pairs/ shards, config.json."""
  wd = tmp_path_factory.mktemp("wd")
  cfg = SearchConfig(budget=6, max_turns=4, seed=3)
  run_search(BanditEnv(ARMS, max_turns=4, p_end=0.1), es_roots(5), cfg, str(wd / "search"), trees_per_shard=2,
             progress=False, pairs_dir=str(wd / "pairs"))
  (wd / "config.json").write_text(json.dumps({"task": "es", "search": {"pair_min_visits": cfg.pair_min_visits}}))
  return wd


def _pair_files(wd):
  return sorted(str(p) for p in (wd / "pairs").glob("shard-*.jsonl") if p.stat().st_size > 0)


def test_dpo_export_round_trip(workdir, tmp_path, sandbox_chat_tok):
  files = _pair_files(workdir)
  written = [json.loads(line) for f in files for line in open(f, encoding="utf-8")]
  pipeline_pairs = pair_data.read_pair_files(files)     # what the dpo stage trains on
  assert pipeline_pairs == written and len(written) > 5  # datasets reads the JSONL losslessly
  out = tmp_path / "ds"
  got = pairs_dataset.export_dataset(workdir, out, "dpo", command="python launch/export.py ...")
  ds = datasets.load_from_disk(str(out))
  assert got["rows"] == len(ds) == len(written)
  assert {"prompt", "chosen", "rejected", "tree_id", "condition_id", "depth", "chosen_value", "rejected_value",
          "margin"} <= set(ds.column_names)
  assert ds[0]["prompt"] == written[0]["prompt"] and ds[0]["margin"] == written[0]["meta"]["margin"]
  exported = pair_data.read_pair_files([str(out)])   # launch/dpo.py --pairs=DIR reads this
  assert exported == pipeline_pairs
  a = pair_data.tokenize_pairs(pipeline_pairs, sandbox_chat_tok, 256, 64, 16)
  b = pair_data.tokenize_pairs(exported, sandbox_chat_tok, 256, 64, 16)
  assert a.keys() == b.keys()
  for k in a:
    for name in a[k]:
      np.testing.assert_array_equal(a[k][name], b[k][name])
  card = (out / "README.md").read_text()
  assert f"rows: {len(ds)}" in card and pairs_dataset.config_fingerprint(workdir) in card
  assert "python launch/export.py" in card and "`chosen_value`" in card
  with pytest.raises(ValueError, match="not empty"):
    pairs_dataset.export_dataset(workdir, out, "dpo")
  assert pairs_dataset.export_dataset(workdir, out, "dpo", force=True)["rows"] == len(ds)


def _tree(values, visits, parents, texts):
  root = {"id": "r0", "task": "es", "turns": [{"role": "user", "text": "I feel low", "strategy": None}],
          "condition": {"emotion_type": "sadness"}, "outcome": {}}
  n = len(values)
  return {"root": root, "parent": parents, "value": values, "visits": visits, "depth": [0] * n,
          "agent_text": [None] + texts, "agent_strategy": [None] + ["s"] * (n - 1),
          "user_text": [None] + [f"reply {i}" for i in range(1, n)]}


def test_kto_rule_known_answer():
  # node 0: children 1..3 with values 1.0, 0.5, 0.5 (1 desirable; 2, 3 below their siblings' mean 0.75);
  # child 4 of node 0 is unvisited (not scored); node 1: children 5, 6 tie at 0.2 (dropped);
  # node 2: children 7, 8 with 0.0 and 0.4 (8 desirable)
  values = [0.6, 1.0, 0.5, 0.5, None, 0.2, 0.2, 0.0, 0.4]
  visits = [9, 3, 2, 2, 0, 1, 1, 1, 1]
  parents = [-1, 0, 0, 0, 0, 1, 1, 2, 2]
  tree = _tree(values, visits, parents, [f"agent {i}" for i in range(1, 9)])
  tree["depth"] = [0, 1, 1, 1, 1, 2, 2, 2, 2]
  rows = pairs_dataset.kto_rows(tree, tree_id=7)
  got = [(r["node"], r["child_node"], r["label"], round(r["siblings_mean"], 9)) for r in rows]
  assert got == [(0, 1, True, 0.5), (0, 2, False, 0.75), (0, 3, False, 0.75), (2, 7, False, 0.4), (2, 8, True, 0.0)]
  root_turn = Turn("user", "I feel low")
  assert rows[0]["prompt"] == agent_messages("es", [root_turn])
  assert rows[3]["prompt"] == agent_messages("es", [root_turn, Turn("agent", "agent 2"), Turn("user", "reply 2")])
  assert rows[4]["completion"] == [{"role": "assistant", "content": "agent 8"}]
  assert rows[3]["depth"] == 1 and rows[3]["tree_id"] == 7 and rows[4]["margin"] == pytest.approx(0.4)
  assert pairs_dataset.kto_rows(tree, tree_id=7, min_visits=2) == rows[:3]   # node 2's children: 1 visit


def test_kto_export_matches_the_pairs_prompts(workdir, tmp_path):
  out = tmp_path / "kto"
  got = pairs_dataset.export_dataset(workdir, out, "kto")
  ds = datasets.load_from_disk(str(out))
  assert got["rows"] == len(ds) > 0 and got["desirable"] == sum(ds["label"]) > 0 and got["undesirable"] > 0
  card = (out / "README.md").read_text()
  assert f"desirable (label True): {got['desirable']}" in card and f"undesirable (label False): {got['undesirable']}" in card
  for r in ds:
    assert r["label"] == (r["value"] > r["siblings_mean"]) and r["margin"] == pytest.approx(r["value"] - r["siblings_mean"])
  # every pair's parent node rebuilt from the tree files gives the pair's own prompt, and the
  # pair's chosen / rejected turns are among that node's kto completions
  by_node = {}
  for r in ds:
    by_node.setdefault((r["tree_id"], r["node"]), []).append(r)
  for p in pair_data.read_pair_files(_pair_files(workdir)):
    rows = by_node[(p["meta"]["tree_id"], p["meta"]["node"])]
    assert all(r["prompt"] == p["prompt"] for r in rows)
    texts = {r["completion"][0]["content"]: r["label"] for r in rows}
    if p["chosen"][0]["content"] in texts and p["rejected"][0]["content"] in texts:
      assert texts[p["chosen"][0]["content"]] >= texts[p["rejected"][0]["content"]]


def test_export_launcher_and_bad_inputs(workdir, tmp_path):
  out = tmp_path / "cli"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "export.py"), f"--workdir={workdir}",
                         f"--dataset_out={out}", "--format=kto"], capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "kto rows" in proc.stdout and len(datasets.load_from_disk(str(out))) > 0
  assert f"--dataset_out={out} --format=kto" in (out / "README.md").read_text()
  old = tmp_path / "old"
  (old / "search" / "trees").mkdir(parents=True)
  (old / "config.json").write_text("{}")
  (old / "search" / "trees" / "shard-00000.json").write_text(json.dumps(
      {"tree_ids": [0], "trees": [{"parent": [-1], "value": [None], "visits": [0], "depth": [0]}]}))
  with pytest.raises(ValueError, match="no node texts") as e:
    pairs_dataset.export_dataset(old, tmp_path / "x", "kto")
  assert "shard-00000.json" in str(e.value)
  with pytest.raises(ValueError, match="no preference pairs"):
    pairs_dataset.export_dataset(old, tmp_path / "y", "dpo")


def _tiny_torch_model(vocab_size: int):
  import transformers  # optional dep (torch): test-only
  cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
  return transformers.LlamaForCausalLM(cfg)


def test_trl_trainers_accept_both_formats(workdir, tmp_path, sandbox_chat_tok):
  """TRL's DPOTrainer and KTOTrainer take the exported datasets as train_dataset (their own
  tokenization, no training); DPO's token ids agree with pair_data.tokenize_pairs."""
  trl = pytest.importorskip("trl")  # the test extra pins it (setup.cfg)
  hf_tok = sandbox_chat_tok.hf
  if hf_tok.pad_token is None:
    hf_tok.pad_token = hf_tok.eos_token
  pairs_dataset.export_dataset(workdir, tmp_path / "dpo", "dpo")
  pairs_dataset.export_dataset(workdir, tmp_path / "kto", "kto")
  dpo_ds = datasets.load_from_disk(str(tmp_path / "dpo"))
  kto_ds = datasets.load_from_disk(str(tmp_path / "kto"))
  common = dict(report_to=[], use_cpu=True, max_length=None, dataset_num_proc=None, save_strategy="no")
  model, ref = _tiny_torch_model(len(hf_tok)), _tiny_torch_model(len(hf_tok))  # a model instance: ref given
  dpo = trl.DPOTrainer(model=model, ref_model=ref, args=trl.DPOConfig(output_dir=str(tmp_path / "o1"), **common),
                       train_dataset=dpo_ds, processing_class=hf_tok)
  got = dpo.train_dataset
  assert len(got) == len(dpo_ds) and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(got.column_names)
  ours = pair_data.tokenize_pairs(pair_data.read_pair_files([str(tmp_path / "dpo")]), sandbox_chat_tok, 1024, 512, 16)
  checked = 0
  for arr in ours.values():
    for j, i in enumerate(arr["pair_index"]):
      row = got[int(i)]
      assert arr["prompt_ids"][j][arr["prompt_mask"][j] == 1].tolist() == row["prompt_ids"]
      for side in ("chosen", "rejected"):
        mine = arr[f"{side}_ids"][j][arr[f"{side}_mask"][j] == 1].tolist()
        assert row[f"{side}_ids"][:len(mine)] == mine   # TRL keeps the template's text after end-of-turn
      checked += 1
  assert checked == len(dpo_ds)
  kto = trl.KTOTrainer(model=model, ref_model=ref, args=trl.KTOConfig(output_dir=str(tmp_path / "o2"), **common),
                       train_dataset=kto_ds, processing_class=hf_tok)
  assert len(kto.train_dataset) == len(kto_ds)
  assert sum(kto.train_dataset["label"]) == sum(kto_ds["label"])
  for i in range(0, len(kto_ds), 7):
    row = kto.train_dataset[i]
    assert row["prompt_ids"] == sandbox_chat_tok.apply_chat(kto_ds[i]["prompt"], add_generation_prompt=True)
    assert row["completion_ids"][:3] == sandbox_chat_tok.encode(kto_ds[i]["completion"][0]["content"])[:3]


def test_dpo_on_a_foreign_trl_dataset_equals_dpo_on_the_same_jsonl(tmp_path):
  """launch/dpo.py --pairs=DIR's path: train_dpo on a saved TRL-conversational dataset (no search
  columns) runs the same steps as on the same rows as JSON lines."""
  tok = H.tokenizer(str(tmp_path))
  rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in H.sandbox_pairs(12, seed=1)]
  rows = list({json.dumps(r, sort_keys=True): r for r in rows}.values())   # no repeated rows
  jsonl = H.write_pairs(str(tmp_path / "pairs.jsonl"), rows)
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "foreign"))
  cfg = dict(steps=3, batch_size=4, learning_rate=3e-3, max_len=96, max_completion_len=32, min_bucket=32,
             checkpoint_every=0, **H.FAST)
  got = {}
  for name, src in (("jsonl", [jsonl]), ("dataset", str(tmp_path / "foreign"))):
    policy, ref = H.tiny_model(tok.vocab_size, seed=1), H.tiny_model(tok.vocab_size, seed=2)
    _, summary = dpo_train.train_dpo(policy, ref, src, tok, cfg, str(tmp_path / f"run_{name}"))
    got[name] = [(r["loss"], r["rewards/margins"]) for r in read_metrics(str(tmp_path / f"run_{name}"))]
    assert summary["pairs"] == len(rows)
  assert len(got["jsonl"]) == 3
  np.testing.assert_allclose(np.asarray(got["dataset"]), np.asarray(got["jsonl"]), rtol=1e-6, atol=1e-7)
