"""Every bad input is one line, `error: <what> (<where>)`, exit code 2, no traceback, naming the key
or file, and nothing is written before an error that can be known up front.

Launcher cases run the real command line (a subprocess, about 2 s each); config-value and data
cases call `pipeline.run` in-process through `errors.guard` (what the launchers do after parsing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engage_jax import config_check, errors, pipeline
from engage_jax.data import esconv, p4g
from tests import config_files

REPO = Path(__file__).resolve().parents[1]

ES_RECORD = {"emotion_type": "anxiety", "problem_type": "job crisis", "situation": "I may lose my job.",
             "dialog": [{"text": "Hello", "speaker": "usr"}, {"text": "Hi, how are you?", "speaker": "sys"},
                        {"text": "Thanks, I feel much better now.", "speaker": "usr"}]}


def _config(name: str = "sandbox_es", **overrides):
  cfg = config_files.get_config(REPO / "configs" / f"{name}.py")
  for key, value in overrides.items():
    *parents, last = key.split("__")
    node = cfg
    for p in parents:
      node = node[p]
    node[last] = value
  return cfg


def _esconv_dir(root: Path, train: str | None = None) -> Path:
  d = root / "esconv"
  d.mkdir(parents=True, exist_ok=True)
  line = json.dumps(ES_RECORD) + "\n"
  for split in ("train", "valid", "test"):
    (d / f"{split}.txt").write_text(line * 2)
  if train is not None:
    (d / "train.txt").write_bytes(train.encode("utf-8") if isinstance(train, str) else train)
  return d


@pytest.fixture
def cli(capsys, monkeypatch):
  """cli(fn, *args) → the stderr lines of fn failing through errors.guard (asserts exit 2, one
  'error:' line per problem, no traceback)."""
  monkeypatch.delenv("ENGAGE_DEBUG", raising=False)

  def call(fn, *args, **kw):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
      errors.guard(fn, *args, **kw)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(x.startswith("error: ") for x in lines), err
    return lines
  return call


def _run_bad(cli, tmp_path, cfg, needle: str, where: str | None = None) -> str:
  """pipeline.run(cfg) must fail up front, naming `needle`, with the workdir never created."""
  wd = tmp_path / "wd"
  lines = cli(pipeline.run, cfg, str(wd))
  hit = [x for x in lines if needle in x]
  assert hit, lines
  if where:
    assert hit[0].endswith(f"({where})"), hit[0]
  assert not wd.exists()
  return hit[0]


# ------------------------------------------------------------------- config values (in-process)
@pytest.mark.parametrize("overrides,key", [
    ({"search__agent_sampling__top_p": 1.5}, "config.search.agent_sampling.top_p"),
    ({"search__agent_sampling__top_p": 0.0}, "config.search.agent_sampling.top_p"),
    ({"search__simulator_sampling__max_new_tokens": 0}, "config.search.simulator_sampling.max_new_tokens"),
    ({"eval__agent_sampling__temperature": -1.0}, "config.eval.agent_sampling.temperature"),
    ({"eval__agent_sampling__top_p": 2.0}, "config.eval.agent_sampling.top_p"),
    ({"eval__simulator_sampling__top_k": -1}, "config.eval.simulator_sampling.top_k"),
    ({"sft__agent_steps": -5}, "config.sft.agent_steps"),
    ({"sft__simulator_steps": 0}, "config.sft.simulator_steps"),   # no SFT needs a pretrained model
    ({"sft__batch_size": 0}, "config.sft.batch_size"),
    ({"sft__learning_rate": -1e-3}, "config.sft.learning_rate"),
    ({"sft__grad_accum": 0}, "config.sft.grad_accum"),
    ({"dpo__loss_type": "nope"}, "config.dpo.loss_type"),
    ({"dpo__beta": 0.0}, "config.dpo.beta"),
    ({"dpo__label_smoothing": 0.7}, "config.dpo.label_smoothing"),
    ({"dpo__heldout_fraction": 0.9}, "config.dpo.heldout_fraction"),
    ({"search__k": 1}, "config.search.k"),
    ({"search__budget": 0}, "config.search.budget"),
    ({"search__selection": "greedy"}, "config.search.selection"),
    ({"eval__n_conditions": 0}, "config.eval.n_conditions"),
    ({"reward__es_pattern": "(unclosed"}, "config.reward.es_pattern"),
    ({"reward__donation_cap": 0.0}, "config.reward.donation_cap"),
    ({"reward__readout": "mean"}, "config.reward.readout"),
    ({"reward__readout": "expected"}, "config.reward.readout"),   # ES: regex only
    ({"model__agent__num_attention_heads": 0}, "config.model.agent.num_attention_heads"),
    ({"model__agent__hidden_size": 130}, "config.model.agent.num_attention_heads"),
    ({"model__simulator__num_key_value_heads": 3}, "config.model.simulator.num_key_value_heads"),
    ({"model__agent__max_position_embeddings": 64}, "config.model.agent.max_position_embeddings"),
    ({"model__dtype": "float16"}, "config.model.dtype"),
    ({"tokenizer__vocab_size": 100}, "config.tokenizer.vocab_size"),
    ({"mesh__data": 3}, "config.mesh"),
    ({"mesh__data": -1, "mesh__fsdp": -1}, "config.mesh"),
    ({"task": "chat"}, "config.task"),
    ({"data__source": "esconv"}, "config.data.path"),
    ({"data__source": "p4g"}, "config.data.source"),             # p4g data with task "es"
    ({"data__max_len": 0}, "config.data.max_len"),
])
def test_bad_config_value(cli, tmp_path, overrides, key):
  line = _run_bad(cli, tmp_path, _config(**overrides), key, where=key)
  assert "got" in line or "needs" in line or "must" in line


def test_every_problem_is_reported_at_once(cli, tmp_path):
  cfg = _config(search__agent_sampling__top_p=1.5, eval__agent_sampling__temperature=-1.0, sft__agent_steps=-5)
  lines = cli(pipeline.run, cfg, str(tmp_path / "wd"))
  assert len(lines) == 3 and {x.rsplit("(", 1)[1] for x in lines} == {
      "config.search.agent_sampling.top_p)", "config.eval.agent_sampling.temperature)", "config.sft.agent_steps)"}
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("old,new", [("search__sim_temperature", "config.search.simulator_sampling.temperature"),
                                     ("search__top_p", "config.search.agent_sampling.top_p"),
                                     ("eval__sim_max_new_tokens", "config.eval.simulator_sampling.max_new_tokens")])
def test_renamed_sampling_key_in_a_config_names_the_new_key(cli, tmp_path, old, new):
  """A config file that still sets a flat sampling key (an unlocked ConfigDict adds it): one line."""
  cfg = _config(**{old: 0.3})
  lines = cli(pipeline.run, cfg, str(tmp_path / "wd"))
  assert lines == [f"error: renamed: set {new} instead (config.{old.replace('__', '.')})"]
  assert not (tmp_path / "wd").exists()


def test_unknown_key_in_a_sampling_section(cli, tmp_path):
  cfg = _config()
  cfg.eval.agent_sampling.temprature = 0.5
  _run_bad(cli, tmp_path, cfg, "unknown sampling key", "config.eval.agent_sampling.temprature")


# ------------------------------------------------------------------- paths and files (in-process)
def test_model_config_json_that_is_a_list(cli, tmp_path):
  m = tmp_path / "model"
  m.mkdir()
  (m / "config.json").write_text("[1, 2]")
  line = _run_bad(cli, tmp_path, _config(model__agent__path=str(m)), "config.json", "config.model.agent.path")
  assert "JSON object" in line


def test_model_path_missing_and_fake_gguf(cli, tmp_path):
  _run_bad(cli, tmp_path, _config(model__agent__path=str(tmp_path / "nope.gguf")), "no such GGUF file",
           "config.model.agent.path")
  fake = tmp_path / "fake.gguf"
  fake.write_bytes(b"NOPE" + b"\0" * 16)
  _run_bad(cli, tmp_path, _config(model__simulator__path=str(fake)), "not a GGUF file", "config.model.simulator.path")


def test_gguf_file_and_hf_dir_are_accepted(tmp_path):
  gguf = tmp_path / "m.gguf"
  gguf.write_bytes(b"GGUF" + b"\0" * 16)
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                              "num_attention_heads": 4, "num_key_value_heads": 2}))
  cfg = _config(model__agent__path=str(gguf), model__simulator__path=str(hf), tokenizer__path=str(gguf))
  assert config_check.problems(cfg, devices=1) == []


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_invalid_tokenizer_files_are_named(cli, tmp_path, name):
  t = tmp_path / "tok"
  t.mkdir()
  (t / "tokenizer.json").write_text("{}")
  (t / name).write_text("{broken")
  line = _run_bad(cli, tmp_path, _config(tokenizer__path=str(t)), name, "config.tokenizer.path")
  assert "not valid JSON" in line


def test_esconv_data_path_may_be_the_folder_above_esconv(tmp_path):
  """pipeline.run validates data.path as config_check and the loaders read it (`esconv.esconv_dir`:
  DIR/esconv/ when it exists): the folder above the split files is accepted up front."""
  d = _esconv_dir(tmp_path / "data")
  wd = pipeline.run(_config("esconv_tiny", data__path=str(d.parent)), str(tmp_path / "wd"), stages=())
  assert wd.path("config.json").is_file()


def test_esconv_missing_files(cli, tmp_path):
  _run_bad(cli, tmp_path, _config("esconv_tiny", data__path=str(tmp_path / "none")), "missing train.txt",
           "config.data.path")


def test_esconv_empty_train_split(cli, tmp_path):
  d = _esconv_dir(tmp_path / "data", train="")
  _run_bad(cli, tmp_path, _config("esconv_tiny", data__path=str(d)), "the file is empty", str(d / "train.txt"))


def test_esconv_blank_lines_only_is_an_empty_split(cli, tmp_path):
  d = _esconv_dir(tmp_path / "data", train="\n\n")
  _run_bad(cli, tmp_path, _config("esconv_tiny", data__path=str(d)), "train split has no dialogues",
           str(d / "train.txt"))


def test_esconv_non_utf8_byte_names_file_and_line(cli, tmp_path):
  good = json.dumps(ES_RECORD).encode()
  d = _esconv_dir(tmp_path / "data", train=good + b"\n" + good.replace(b"Hello", b"H\xffllo") + b"\n")
  _run_bad(cli, tmp_path, _config("esconv_tiny", data__path=str(d)), "not valid UTF-8", f"{d / 'train.txt'}:2")
  loaded = esconv.load_split(d, "train", skip_bad=True)  # skip_bad skips it like any bad record
  assert len(loaded) == 1 and loaded.skipped == 1 and "UTF-8" in loaded.errors[0]


def test_esconv_malformed_record_names_file_and_line(cli, tmp_path):
  good = json.dumps(ES_RECORD)
  d = _esconv_dir(tmp_path / "data", train=f"{good}\n{{not json\n")
  _run_bad(cli, tmp_path, _config("esconv_tiny", data__path=str(d)), "malformed JSON", f"{d / 'train.txt'}:2")


def test_p4g_missing_column_names_file_and_line(cli, tmp_path):
  d = tmp_path / "p4g"
  d.mkdir()
  (d / "full_dialog.csv").write_text(",Unit,Turn,B4,B2\n0,Hi,0,0,d1\n")
  (d / "full_info.csv").write_text("B2,B3,B4\nd1,u1,0\n")
  _run_bad(cli, tmp_path, _config("p4g_tiny", data__path=str(d)), "missing field 'B6'", f"{d / 'full_info.csv'}:2")


def test_p4g_bad_dialogue_is_reported_once_in_its_own_split(tmp_path):
  ids = [f"x{i}" for i in range(60)]
  bad = next(i for i in ids if p4g.split_of(i) == "valid")
  dialog = ",Unit,Turn,B4,B2\n" + "".join(f"0,Hi,0,0,{i}\n1,No,0,1,{i}\n" for i in ids)
  info = "B2,B3,B4,B6,B7\n" + "".join(f"{i},u,1,{'lots' if i == bad else '0.5'},2\n" for i in ids)
  (tmp_path / "full_dialog.csv").write_text(dialog)
  (tmp_path / "full_info.csv").write_text(info)
  got = {s: p4g.load_split(tmp_path, s, skip_bad=True) for s in p4g.SPLITS}
  assert {s: g.skipped for s, g in got.items()} == {"train": 0, "valid": 1, "test": 0}
  assert bad in got["valid"].errors[0] and sum(len(g) for g in got.values()) == 59


# ------------------------------------------------------------------- workdir (in-process)
def test_workdir_that_is_a_file(cli, tmp_path):
  f = tmp_path / "wd"
  f.write_text("x")
  lines = cli(pipeline.run, _config(), str(f))
  assert lines == [f"error: the work directory is a file, not a directory (--workdir={f})"]
  assert f.read_text() == "x"


def test_workdir_not_empty_without_config(cli, tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "notes.txt").write_text("mine")
  lines = cli(pipeline.run, _config(), str(wd))
  assert "no config.json" in lines[0] and lines[0].endswith(f"(--workdir={wd})")
  assert sorted(p.name for p in wd.iterdir()) == ["notes.txt"]


def test_corrupt_stage_record_is_named(cli, tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "config.json").write_text("{}")
  (wd / "stages.json").write_text("{oops")
  lines = cli(pipeline.run, _config(), str(wd))
  assert lines[0].endswith(f"({wd / 'stages.json'})")
  assert (wd / "stages.json").read_text() == "{oops" and (wd / "config.json").read_text() == "{}"


def test_unknown_stage_and_redo_names(cli, tmp_path):
  assert cli(pipeline.run, _config(), str(tmp_path / "wd"), ("sft",))[0].endswith("(--stages)")
  assert cli(pipeline.run, _config(), str(tmp_path / "wd"), redo=("nope",))[0].endswith("(--redo)")
  assert not (tmp_path / "wd").exists()


def test_atomic_writes_respect_the_umask(tmp_path):
  from engage_jax.fileio import atomic_write_json
  old = os.umask(0o022)
  try:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
  finally:
    os.umask(old)
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------- the real command lines
def _launch(*args: str, env: dict | None = None, module: bool = False):
  cmd = [sys.executable, *(["-m"] if module else []), *args]
  full_env = {k: v for k, v in os.environ.items() if k != "ENGAGE_DEBUG"}
  full_env.update(env or {})
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=full_env)


def _one_line(proc, needle: str) -> str:
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
  return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--config.sft.nope=1"], "(--config.sft.nope)"),
    (["--config.nosection.x=1"], "(--config.nosection.x)"),
    (["--config.sft.agent_steps=abc"], "(--config.sft.agent_steps)"),
    (["--bogus=1"], "unknown flag --bogus"),
    (["--config.search.agent_sampling.top_p=1.5"], "(config.search.agent_sampling.top_p)"),
    (["--config.search.sim_temperature=0.3"],   # a flat key from before the sampling sub-sections
     "renamed to 'search.simulator_sampling.temperature' (--config.search.sim_temperature)"),
    (["--config.eval.max_new_tokens=8"], "renamed to 'eval.agent_sampling.max_new_tokens' (--config.eval.max_new_tokens)"),
    (["--redo=nope"], "(--redo)"),
])
def test_launcher_flag_and_value_errors(tmp_path, args, needle):
  wd = tmp_path / "wd"
  _one_line(_launch("launch/sft.py", "--config=configs/sandbox_es.py", f"--workdir={wd}", *args), needle)
  assert not wd.exists()


def test_launcher_config_file_missing_syntax_error_and_exception(tmp_path):
  wd = tmp_path / "wd"
  _one_line(_launch("launch/pipeline.py", "--config=configs/nope.py", f"--workdir={wd}"),
            "config file not found (configs/nope.py)")
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  _one_line(_launch("launch/pipeline.py", f"--config={bad}", f"--workdir={wd}"), f"({bad}:1)")
  bad.write_text("def get_config():\n  return undefined_name\n")
  _one_line(_launch("launch/pipeline.py", f"--config={bad}", f"--workdir={wd}"), "NameError")
  assert not wd.exists()


def test_launcher_workdir_in_unwritable_place(tmp_path):
  wd = "/sys/engage_jax_test/run"
  line = _one_line(_launch("launch/sft.py", "--config=configs/sandbox_es.py", f"--workdir={wd}"), wd)
  assert not os.path.exists(wd) and "ermi" in line  # "Permission denied" / "Operation not permitted"


def test_plan_launcher_bad_model_dims(tmp_path):
  _one_line(_launch("launch/plan.py", "--config=configs/sandbox_es.py", "--config.model.agent.num_attention_heads=0"),
            "(config.model.agent.num_attention_heads)")


def test_export_without_checkpoints(tmp_path):
  _one_line(_launch("launch/export.py", "--config=configs/sandbox_es.py", f"--workdir={tmp_path}"),
            str(tmp_path / "dpo_agent" / "checkpoints"))


def test_stats_tool_errors(tmp_path):
  _one_line(_launch("engage_jax.data.stats", f"--data_dir={tmp_path / 'none'}", module=True), "no such data directory")
  d = _esconv_dir(tmp_path / "data", train="\n")
  _one_line(_launch("engage_jax.data.stats", f"--data_dir={tmp_path / 'data'}", module=True),
            f"train split has no dialogues ({d / 'train.txt'})")
  _esconv_dir(tmp_path / "data", train="{not json\n")
  _one_line(_launch("engage_jax.data.stats", f"--data_dir={tmp_path / 'data'}", module=True), f"({d / 'train.txt'}:1)")


def test_engage_debug_keeps_the_traceback(tmp_path):
  proc = _launch("launch/sft.py", "--config=configs/sandbox_es.py", f"--workdir={tmp_path / 'wd'}",
                 "--config.search.agent_sampling.top_p=1.5", env={"ENGAGE_DEBUG": "1"})
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "config.search.agent_sampling.top_p" in proc.stderr


def test_p4g_non_utf8_byte_names_file_and_line(cli, tmp_path):
  d = tmp_path / "p4g"
  d.mkdir()
  (d / "full_dialog.csv").write_bytes(b",Unit,Turn,B4,B2\n0,Hi,0,0,d1\n1,N\xe9e,0,1,d1\n")
  (d / "full_info.csv").write_text("B2,B3,B4,B6,B7\nd1,u,1,0.5,2\n")
  _run_bad(cli, tmp_path, _config("p4g_tiny", data__path=str(d)), "not valid UTF-8", f"{d / 'full_dialog.csv'}:3")


def test_error_inside_a_stage_names_the_stage():
  e = ValueError("BatchIterator: no examples")
  e.engage_stage = "sft_simulator"
  assert errors.line(e) == "error: ValueError: BatchIterator: no examples (stage sft_simulator)"
