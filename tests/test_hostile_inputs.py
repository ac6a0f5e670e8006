"""Hostile inputs a probe found (issue 26 part 5): each is one line, `error: <what> (<where>)`,
naming the file (and line) or key, before any work where it can be known up front.

Same style as tests/test_bad_inputs.py (whose `cli` fixture and `_config` helper these reuse).
"""
from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from engage_jax import build, errors, pipeline
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
  monkeypatch.setattr(build, "load_tokenizer", lambda wd: None)
  monkeypatch.setattr(build, "load_model", lambda *a, **k: pytest.fail("loaded a model before the pairs check"))
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
  monkeypatch.setattr(build, "load_tokenizer", lambda wd: tok)
  model = build.new_model(cfg, "agent", tok)   # seeded base + seeded random adapters, as SFT starts
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


# ------------------------------------------------------------------- late or misleading (up front now)
@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
  """(an HF model dir with a 64-token vocabulary, an HF tokenizer dir of ~300 tokens)."""
  from flax import nnx

  from engage_jax import models
  from engage_jax.data import sandbox
  from engage_jax.tokenizer import train_bpe
  root = tmp_path_factory.mktemp("files")
  m = models.CausalLM(models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2), rngs=nnx.Rngs(0))
  models.save_pretrained(m, root / "model")
  tok = train_bpe(sandbox.all_texts("es"), 300, root / "tok")
  return root / "model", root / "tok", tok.vocab_size


def test_tokenizer_larger_than_the_model_vocabulary_is_refused_up_front(cli, tmp_path, small_files):  # noqa: F811
  from tests.test_bad_inputs import _config
  model, tok, n = small_files
  wd = tmp_path / "wd"
  cfg = _config(model__agent__path=str(model), tokenizer__path=str(tok))
  assert cli(pipeline.run, cfg, str(wd)) == [
      f"error: the tokenizer has {n} tokens, more than the agent model's vocabulary of 64 ({model}): ids >= 64 "
      f"have no embedding (config.tokenizer.path)"]
  assert not wd.exists()


def test_model_dir_without_weights_and_fake_gguf_are_refused_before_the_workdir(cli, tmp_path, small_files):  # noqa: F811
  from tests.test_bad_inputs import _config
  _, tok, _ = small_files
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "config.json").write_text((small_files[0] / "config.json").read_text())
  fake = tmp_path / "fake.gguf"
  fake.write_bytes(b"GGUF" + b"\0" * 60)   # the right magic, nothing else
  wd = tmp_path / "wd"
  lines = cli(pipeline.run, _config(model__simulator__path=str(bare), tokenizer__path=str(fake)), str(wd))
  assert [x.rsplit(" (", 1)[1] for x in lines] == ["config.tokenizer.path)", "config.model.simulator.path)"]
  assert lines[0].startswith(f"error: cannot load the tokenizer (ValueError: {fake}: not a readable GGUF file")
  assert lines[1] == f"error: cannot load the model (FileNotFoundError: {bare}: no *.safetensors files) " \
                     f"(config.model.simulator.path)"
  assert not wd.exists()


def test_max_prompt_len_beyond_positions_or_under_the_system_prompt(cli, tmp_path, small_files):  # noqa: F811
  from tests.test_bad_inputs import _config
  cfg = _config(eval__max_prompt_len=10_000)
  pos = cfg.model.agent.max_position_embeddings
  lines = cli(pipeline.run, cfg, str(tmp_path / "wd"))
  assert lines[0] == f"error: 10000 is beyond the agent model's {pos} positions (config.eval.max_prompt_len)"
  _, tok, _ = small_files
  lines = cli(pipeline.run, _config(search__max_prompt_len=4, tokenizer__path=str(tok)), str(tmp_path / "wd"))
  assert len(lines) == 2 and all(x.startswith("error: 4 is shorter than the ") and x.endswith(
      "tokens) (config.search.max_prompt_len)") for x in lines), lines
  assert not (tmp_path / "wd").exists()


def test_stages_before_their_dependencies_is_one_line(cli, tmp_path):  # noqa: F811
  from tests.test_bad_inputs import _config
  wd = tmp_path / "wd"
  assert cli(pipeline.run, _config(), str(wd), ("tokenizer", "dpo")) == [
      "error: stage dpo needs search, which is not done in this workdir; add it to --stages, or leave --stages "
      "out (done stages are skipped) (--stages)"]
  assert not wd.exists()


def test_evaluation_runs_in_batches_of_eval_batch_size(cli, tmp_path, monkeypatch, small_files):  # noqa: F811
  """eval.n_conditions beyond memory: the evaluation stage plays at most eval.batch_size conditions per
  simulate call (before: all 300 x samples in one call); a negative batch size is one line."""
  import dataclasses

  from engage_jax import evaluate
  from tests.test_bad_inputs import _config
  calls = []

  def fake_simulate(agent, sim, starts, *, task, max_agent_turns, reward_cfg, seed, **kw):
    calls.append(len(starts))
    return [dataclasses.replace(s, outcome={"reward": 0.0}) for s in starts]
  monkeypatch.setattr(evaluate, "_default_simulate", lambda: fake_simulate)
  from engage_jax.tokenizer import ChatTokenizer
  tok = ChatTokenizer.load(small_files[1])
  monkeypatch.setattr(build, "load_tokenizer", lambda wd: tok)
  monkeypatch.setattr(build, "load_model", lambda *a, **k: None)
  monkeypatch.setattr(build, "speaker", lambda *a, **k: None)
  cfg = _config(eval__n_conditions=300, eval__samples_per_condition=1, eval__batch_size=128)
  summary = pipeline.stage_evaluate(cfg, Workdir(tmp_path / "wd"), "sft")
  assert calls == [128, 128, 44] and summary["n"] == 300
  assert _config().eval.batch_size == 256   # the default: above every shipped config's n_conditions
  line, = cli(pipeline.run, _config(eval__batch_size=-1), str(tmp_path / "wd2"))
  assert line == "error: must be an integer >= 0 (0: all conditions in one call); got -1 (config.eval.batch_size)"


def test_corrupt_checkpoint_fallback_is_one_line_per_skipped_step(tmp_path, capsys, caplog, monkeypatch):
  """Orbax's failed async restore printed its orphaned tasks' tracebacks (~1,270 lines for a 30-layer
  model; nondeterministic, so the restore here prints them as Orbax does: to sys.stderr and the
  asyncio logger). Now: one line per skipped step, and a clean restore's output still shows."""
  import logging
  import sys

  from flax import nnx

  from engage_jax import checkpoint
  monkeypatch.delenv("ENGAGE_DEBUG", raising=False)
  model = _checkpoints(tmp_path, (1, 2))
  ck = tmp_path / "dpo_agent" / "checkpoints"
  mgr = checkpoint.CheckpointManager(str(ck), read_only=True)
  real_restore = mgr.restore

  def noisy(params, opt_state=None, step=None):
    print("Traceback (most recent call last):\nRuntimeError: Event loop is closed", file=sys.stderr)
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    if step == 2:
      raise ValueError("DATA_LOSS: bad chunk")
    return real_restore(params, opt_state, step)
  mgr.restore = noisy
  notes = []
  with caplog.at_level(logging.INFO):
    assert mgr.restore_intact(nnx.state(model, nnx.Param), warn=notes.append).step == 1
  assert notes == [f"checkpoint {ck}/2 is corrupt (ValueError: DATA_LOSS: bad chunk); falling back to an older step",
                   f"resuming from step 1 of {ck} (skipped corrupt steps [2])"]
  assert capsys.readouterr().err == "" and not [r for r in caplog.records if r.name == "asyncio"]
  mgr.restore = lambda *a: (print("orbax: a note", file=sys.stderr), real_restore(*a))[1]
  assert mgr.restore_intact(nnx.state(model, nnx.Param), warn=notes.append).step == 2
  assert capsys.readouterr().err == "orbax: a note\n" and len(notes) == 2
  mgr.close()


# ------------------------------------------------------------------- corpus records of the wrong type
def _es_line(**changes) -> str:
  from tests.test_bad_inputs import ES_RECORD
  rec = copy.deepcopy(ES_RECORD)
  rec["dialog"][1]["strategy"] = "Question"
  rec.update(changes)
  return json.dumps(rec)


@pytest.mark.parametrize("changes,what", [
    ({"emotion_type": 5}, "field 'emotion_type' must be a string; got int 5"),
    ({"situation": {"a": 1}}, "field 'situation' must be a string; got dict {'a': 1}"),
    ({"dialog": []}, "the dialogue is empty (no utterance with text in field 'dialog')"),
    ({"dialog": [{"text": "  ", "speaker": "usr"}]}, "the dialogue is empty (no utterance with text in field 'dialog')"),
])
def test_esconv_record_of_the_wrong_type_names_file_and_line(cli, tmp_path, changes, what):  # noqa: F811
  from engage_jax.data import esconv
  from tests.test_bad_inputs import _config, _esconv_dir
  d = _esconv_dir(tmp_path / "data", train=f"{_es_line()}\n{_es_line(**changes)}\n")
  assert cli(esconv.load_split, d, "train") == [f"error: {what} ({d / 'train.txt'}:2)"]
  lines = cli(pipeline.run, _config("esconv_tiny", data__path=str(d)), str(tmp_path / "wd"))
  assert lines == [f"error: {what} ({d / 'train.txt'}:2)"] and not (tmp_path / "wd").exists()


def test_esconv_unknown_strategy_names_the_utterance(cli, tmp_path):  # noqa: F811
  from engage_jax.data import esconv
  from tests.test_bad_inputs import ES_RECORD, _esconv_dir
  rec = copy.deepcopy(ES_RECORD)
  rec["dialog"][1]["strategy"] = "Mind reading"
  d = _esconv_dir(tmp_path / "data", train=json.dumps(rec) + "\n")
  line, = cli(esconv.load_split, d, "train")
  assert line == (f"error: field 'strategy' has unknown value 'Mind reading'; expected one of "
                  f"{', '.join(esconv.STRATEGIES)} ({d / 'train.txt'}:1, utterance 1)")
  rec["dialog"][1]["strategy"] = "Questions"   # an alias of the older label set is still read
  (d / "train.txt").write_text(json.dumps(rec) + "\n")
  assert esconv.load_split(d, "train")[0].turns[1].strategy == "Question"


def test_p4g_empty_dialogue_names_file_and_line(cli, tmp_path):  # noqa: F811
  from engage_jax.data import p4g
  d = tmp_path / "p4g"
  d.mkdir()
  (d / "full_dialog.csv").write_text(",Unit,Turn,B4,B2\n0,Hi,0,0,d1\n1,No,0,1,d1\n2, ,0,0,d2\n3,,0,1,d2\n")
  (d / "full_info.csv").write_text("B2,B3,B4,B6,B7\nd1,u,1,0.5,2\nd2,u,1,0.5,2\n")
  assert cli(p4g.load, d) == [f"error: dialogue d2 is empty (every 'Unit' of its rows is blank) "
                              f"({d / 'full_dialog.csv'}:4)"]
  got = p4g.load(d, skip_bad=True)
  assert [x.id for x in got] == ["d1"] and got.skipped == 1


def test_report_stage_does_not_count_a_repeated_pair(cli, tmp_path, monkeypatch):  # noqa: F811
  """Pairs edited after DPO: the report refused to count 112 rows for 100 pairs."""
  from engage_jax import evaluate
  wd = Workdir(tmp_path / "wd")
  wd.path("pairs").mkdir(parents=True)
  rows = _pairs(3)
  (wd.path("pairs") / "shard-00000.jsonl").write_text("\n".join([*rows, rows[1]]) + "\n")
  monkeypatch.setattr(evaluate, "load_dialogues", lambda path: pytest.fail("read the dialogues before the pairs"))
  line, = cli(pipeline.stage_report, None, wd)
  assert line == (f"error: duplicate pair: the same row as {wd.path('pairs', 'shard-00000.jsonl')}:2 (remove one) "
                  f"({wd.path('pairs', 'shard-00000.jsonl')}:4)")


def test_max_prompt_len_under_a_trained_tokenizers_system_prompt_is_one_line(cli, tmp_path, monkeypatch,  # noqa: F811
                                                                             small_files):
  """With a BPE trained by the tokenizer stage, the system prompts are known only then: the search
  and evaluation stages check them (every condition's) before loading a model."""
  from engage_jax.tokenizer import ChatTokenizer
  from tests.test_bad_inputs import _config
  tok = ChatTokenizer.load(small_files[1])
  monkeypatch.setattr(build, "load_tokenizer", lambda wd: tok)
  monkeypatch.setattr(build, "load_model", lambda *a, **k: pytest.fail("loaded a model before the check"))
  for stage, key in ((lambda c, w: pipeline.stage_evaluate(c, w, "sft"), "eval"), (pipeline.stage_search, "search")):
    cfg = _config(**{f"{key}__max_prompt_len": 12})
    line, = cli(stage, cfg, Workdir(tmp_path / "wd"))
    assert line.startswith("error: 12 is shorter than the ") and line.endswith(
        f"tokens) (config.{key}.max_prompt_len)"), line
  from engage_jax import preflight
  from engage_jax.data.dialogue import Dialogue
  conds = [Dialogue(f"c{i}", "es", [], {"situation": "word " * n}) for i, n in enumerate((1, 200))]
  assert preflight.check_prompt_room(tok, "es", conds[:1], 400, "k") is None
  msg = preflight.check_prompt_room(tok, "es", conds, 100, "config.eval.max_prompt_len")
  assert msg.startswith("config.eval.max_prompt_len=100 cuts the simulator's system prompt (its condition) of 1 of "
                        "2 conditions (longest ") and msg.endswith("tokens); raise it to keep them whole"), msg
