"""Hostile inputs a probe found (issue 26 part 5): each is one line, `error: <what> (<where>)`,
naming the file (and line) or key, before any work where it can be known up front.

Same style as tests/test_bad_inputs.py (whose `cli` fixture and `_config` helper these reuse).
"""
from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from engage_jax import errors, pipeline
from engage_jax.train import pair_data
from engage_jax.workdir import Workdir
from tests.test_bad_inputs import cli  # noqa: F401  (a pytest fixture, used by name)

PAIR = {"prompt": [{"role": "user", "content": "I lost my job."}],
        "chosen": [{"role": "assistant", "content": "That sounds hard. What happened?"}],
        "rejected": [{"role": "assistant", "content": "Okay."}],
        "meta": {"tree_id": 0, "node": 1}}


def _pairs(n: int) -> list[str]:
  rows = []
  for i in range(n):
    p = copy.deepcopy(PAIR)
    p["meta"]["node"] = i
    rows.append(json.dumps(p))
  return rows


# ------------------------------------------------------------------- edited pairs
def test_duplicated_pair_row_is_refused_naming_both_lines(cli, tmp_path):  # noqa: F811
  a, b = tmp_path / "shard-00000.jsonl", tmp_path / "shard-00001.jsonl"
  rows = _pairs(3)
  a.write_text("\n".join(rows) + "\n")
  b.write_text(rows[2] + "\n")  # the same row again, in another shard
  assert cli(pair_data.read_pair_files, [str(a), str(b)]) == [
      f"error: duplicate pair: the same row as {a}:3 (remove one) ({b}:1)"]
  b.write_text(_pairs(4)[3] + "\n")   # a row differing only in meta is another pair
  assert len(pair_data.read_pair_files([str(a), str(b)])) == 4


def test_non_utf8_pair_row_names_file_and_line(cli, tmp_path):  # noqa: F811
  a = tmp_path / "shard-00000.jsonl"
  rows = _pairs(2)
  a.write_bytes(rows[0].encode() + b"\n" + rows[1].encode().replace(b"Okay", b"Ok\xffy") + b"\n")
  byte = rows[1].encode().index(b"Okay") + 2
  assert cli(pair_data.read_pair_files, str(a)) == [f"error: not valid UTF-8 at byte {byte} of the line ({a}:2)"]


def test_dpo_stage_checks_the_pairs_before_loading_a_model(cli, tmp_path, monkeypatch):  # noqa: F811
  wd = Workdir(tmp_path / "wd")
  wd.path("pairs").mkdir(parents=True)
  rows = _pairs(2)
  (wd.path("pairs") / "shard-00000.jsonl").write_text("\n".join([*rows, rows[0]]) + "\n")
  monkeypatch.setattr(pipeline, "load_tokenizer", lambda wd: None)
  monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model before the pairs check"))
  line, = cli(pipeline.stage_dpo, None, wd)
  assert line.endswith(f"({wd.path('pairs', 'shard-00000.jsonl')}:3)") and "duplicate pair" in line


def test_exceptions_without_a_file_get_one_from_naming(tmp_path):
  db = tmp_path / "ratings.db"
  db.write_bytes(b"this is not a database" * 100)
  with pytest.raises(sqlite3.DatabaseError) as e, errors.naming(db):
    sqlite3.connect(db).execute("SELECT 1 FROM sqlite_master")
  assert errors.line(e.value) == f"error: DatabaseError: file is not a database ({db})"
  with pytest.raises(KeyError) as e, errors.naming(db):
    raise KeyError("task")
  assert errors.line(e.value) == f"error: KeyError: task ({db})"
  with pytest.raises(UnicodeDecodeError) as e, errors.naming(db):
    b"ab\xff".decode("utf-8")
  assert errors.line(e.value) == f"error: not valid utf-8 at byte 2: invalid start byte ({db})"


def test_corrupt_study_database_is_named(cli, tmp_path):  # noqa: F811
  from engage_jax.human_eval.store import Store
  db = tmp_path / "rate.sqlite"
  db.write_bytes(b"not a database" * 300)
  assert cli(Store, db, task="es") == [f"error: DatabaseError: file is not a database ({db})"]


# ------------------------------------------------------------------- export
def _checkpoints(root, steps=(1, 2)):
  """A run dir root/dpo_agent/checkpoints with a tiny model saved at `steps` (the model returned)."""
  import dataclasses

  import optax
  from flax import nnx

  from engage_jax import checkpoint
  from engage_jax.models import CausalLM, ModelConfig
  model = CausalLM(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2), rngs=nnx.Rngs(3))
  params = nnx.state(model, nnx.Param)
  mgr = checkpoint.CheckpointManager(str(root / "dpo_agent" / "checkpoints"))
  for s in steps:
    mgr.save(s, params, optax.sgd(0.1).init(params), {"model_config": dataclasses.asdict(model.config)})
  mgr.close()
  return model


def test_export_refuses_a_used_directory_and_force_leaves_no_stale_shard(cli, tmp_path):  # noqa: F811
  from engage_jax import export
  _checkpoints(tmp_path, (1,))
  out = tmp_path / "out"
  out.mkdir()
  (out / "config.json").write_text('{"mine": 1}')
  (out / "model-00002-of-00002.safetensors").write_bytes(b"old shard")
  (out / "notes.md").write_text("kept")
  assert cli(export.export_run, None, tmp_path, "dpo_agent", out) == [
      f"error: is not empty (config.json, model-00002-of-00002.safetensors, notes.md); choose an empty --out, "
      f"or pass --force to replace the model files an earlier export wrote there (--out={out})"]
  assert (out / "config.json").read_text() == '{"mine": 1}'
  export.export_run(None, tmp_path, "dpo_agent", out, force=True)
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.md"]
  assert json.loads((out / "config.json").read_text())["hidden_size"] == 32


def test_export_names_a_corrupt_latest_step_instead_of_an_older_one(cli, tmp_path):  # noqa: F811
  from engage_jax import export
  _checkpoints(tmp_path, (1, 2))
  ck = tmp_path / "dpo_agent" / "checkpoints"
  for p in (ck / "2" / "params").rglob("*"):
    if p.is_file():
      p.write_bytes(b"\0garbage")
  line, = cli(export.export_run, None, tmp_path, "dpo_agent", tmp_path / "out")
  assert line.startswith("error: checkpoint is corrupt (") and line.endswith(
      f"; export an older step with --step=1 (steps: [1, 2]) ({ck}/2)"), line
  assert not (tmp_path / "out" / "model.safetensors").exists()
  assert export.export_run(None, tmp_path, "dpo_agent", tmp_path / "out", step=1)["step"] == 1


def test_exported_files_keep_the_umask(tmp_path):
  import os

  from engage_jax import export
  _checkpoints(tmp_path, (1,))
  old = os.umask(0o022)
  try:
    export.export_run(None, tmp_path, "dpo_agent", tmp_path / "out")
  finally:
    os.umask(old)
  assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {
      "config.json": 0o644, "model.safetensors": 0o644}


def test_lora_export_over_a_seed_initialised_base_loads_in_peft(tmp_path, monkeypatch):
  """Before: adapter_config.json said base_model_name_or_path "" (the seed-initialised base existed
  nowhere), so PEFT could not load the adapter. Now the base is exported as OUT/base."""
  import types

  import numpy as np
  import optax
  import peft  # optional dependency (tests only)
  import torch  # optional dependency (tests only)
  from flax import nnx

  from engage_jax import checkpoint, export
  from engage_jax.train.sft import model_meta
  from tests.test_bad_inputs import _config
  cfg = _config(model__agent__lora__rank=4, model__agent__lora__init="random")
  tok = types.SimpleNamespace(vocab_size=64, bos_id=1, eos_id=2, pad_id=0)
  monkeypatch.setattr(pipeline, "load_tokenizer", lambda wd: tok)
  model = pipeline.new_model(cfg, "agent", tok)   # seeded base + seeded random adapters, as SFT starts
  params = nnx.state(model, nnx.LoRAParam)
  mgr = checkpoint.CheckpointManager(str(tmp_path / "sft_agent" / "checkpoints"))
  mgr.save(5, params, optax.sgd(0.1).init(params), model_meta(model))
  mgr.close()
  got = export.export_run(cfg, tmp_path, "sft_agent", tmp_path / "out")
  pc = json.loads((got["adapter"] / "adapter_config.json").read_text())
  assert pc["base_model_name_or_path"] == str((tmp_path / "out" / "base").resolve())
  ids = np.arange(1, 17, dtype=np.int32)[None] % 64
  ours = np.asarray(model(ids))
  pm = peft.AutoPeftModelForCausalLM.from_pretrained(str(got["adapter"])).eval()
  with torch.no_grad():
    theirs = pm(input_ids=torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
  # fp32 forward of the same weights in two frameworks: agreement relative to the logits' scale
  assert np.abs(theirs - ours).max() < 1e-4 * max(1.0, np.abs(ours).max())
