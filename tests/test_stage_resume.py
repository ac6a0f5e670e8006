"""Per-stage config records: a fixed search setting keeps the finished SFT stages, a changed SFT
setting is refused naming the key until `--redo` reruns that stage (and only what depends on it),
and an unfinished training stage resumes with changed optimizer settings, recorded with its
attempts and summed wall time. One tiny SFT workdir is built once and copied per test."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from engage_jax import pipeline
from engage_jax.errors import InputErrors
from engage_jax.workdir import Workdir
from tests.test_bad_inputs import _config

TINY = dict(data__sandbox_train=40, data__sandbox_valid=8, data__max_len=128, tokenizer__vocab_size=300,
            sft__agent_steps=2, sft__simulator_steps=2, sft__batch_size=4, sft__log_every=1,
            sft__eval_every=0, sft__checkpoint_every=1, sft__warmup_steps=1,
            search__n_conditions=2, search__trees_per_shard=2, search__k=2, search__budget=1,
            search__max_depth=1, search__max_turns=1, search__agent_sampling__max_new_tokens=4,
            search__simulator_sampling__max_new_tokens=4,
            search__max_prompt_len=128)
for _role in ("agent", "simulator"):
  TINY.update({f"model__{_role}__hidden_size": 32, f"model__{_role}__intermediate_size": 64,
               f"model__{_role}__num_hidden_layers": 1, f"model__{_role}__max_position_embeddings": 256})
SFT = ("tokenizer", "sft_agent", "sft_simulator")


def _cfg(**over):
  return _config(**dict(TINY, **over))


def _stamps(wd, under=""):
  return {str(p): p.stat().st_mtime_ns for p in (wd / under).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sft_done(tmp_path_factory):
  wd = tmp_path_factory.mktemp("stages") / "wd"
  pipeline.run(_cfg(), str(wd), SFT)
  return wd


@pytest.fixture
def wd(sft_done, tmp_path):
  d = tmp_path / "wd"
  shutil.copytree(sft_done, d)
  return d


def test_fixing_a_search_setting_after_sft_keeps_the_sft_stages(wd):
  before = _stamps(wd)
  with pytest.raises(InputErrors, match="config.search.agent_sampling.top_p"):
    pipeline.run(_cfg(search__agent_sampling__top_p=1.5), str(wd), pipeline.with_dependencies(("search",)))
  assert _stamps(wd) == before and not (wd / "search").exists()  # refused before any work
  pipeline.run(_cfg(search__agent_sampling__top_p=0.8), str(wd), pipeline.with_dependencies(("search",)))
  after = _stamps(wd)
  for stage in SFT:  # the SFT outputs (checkpoints included) are untouched
    assert {p: t for p, t in after.items() if f"/{stage}/" in p} == {
        p: t for p, t in before.items() if f"/{stage}/" in p}, stage
  st = json.loads((wd / "stages.json").read_text())
  assert st["search"]["done"] and st["search"]["config"]["search.agent_sampling.top_p"] == 0.8
  assert json.loads((wd / "config.json").read_text())["search"]["agent_sampling"]["top_p"] == 0.8
  # the same config again: every stage is skipped, nothing changes
  pipeline.run(_cfg(search__agent_sampling__top_p=0.8), str(wd), pipeline.with_dependencies(("search",)))
  assert _stamps(wd) == {**after, str(wd / "stages.json"): _stamps(wd)[str(wd / "stages.json")]}
  assert json.loads((wd / "stages.json").read_text())["search"]["attempts"] == 1
  # a changed sampling setting of the done search is refused, naming the nested key
  with pytest.raises(InputErrors, match="search.agent_sampling.top_p=0.8 -> 0.7"):
    pipeline.run(_cfg(search__agent_sampling__top_p=0.7), str(wd), pipeline.with_dependencies(("search",)))


def test_stage_recorded_with_the_flat_sampling_keys_stays_done(wd):
  """A workdir from before the sampling sub-sections (stages.json holds search.top_p etc.): the
  renamed keys are in no common key set, so its done stages are kept (and not compared on them)."""
  pipeline.run(_cfg(), str(wd), pipeline.with_dependencies(("search",)))
  path = wd / "stages.json"
  st = json.loads(path.read_text())
  rec = st["search"]["config"]
  for role, prefix in (("agent", ""), ("simulator", "sim_")):
    for k in ("max_new_tokens", "temperature", "top_p", "top_k"):
      rec[f"search.{prefix}{k}"] = rec.pop(f"search.{role}_sampling.{k}")
  path.write_text(json.dumps(st))
  before = _stamps(wd, "search")
  pipeline.run(_cfg(), str(wd), pipeline.with_dependencies(("search",)))
  assert _stamps(wd, "search") == before and json.loads(path.read_text())["search"]["attempts"] == 1


def test_changed_stage_setting_is_refused_then_redo_reruns_it_and_keeps_the_rest(wd, capsys):
  cfg = _cfg(model__simulator__rope_theta=5000.0)
  before = _stamps(wd)
  with pytest.raises(InputErrors) as e:
    pipeline.run(cfg, str(wd), SFT)
  msg = str(e.value)
  assert "stage sft_simulator" in msg and "model.simulator.rope_theta=10000.0 -> 5000.0" in msg
  assert "--redo=sft_simulator" in msg and "sft_agent" not in msg.split("(also")[0].replace("sft_simulator", "")
  assert _stamps(wd) == before
  pipeline.run(cfg, str(wd), SFT, redo=("sft_simulator",))
  after = _stamps(wd)
  for stage in ("tokenizer", "sft_agent"):
    assert {p: t for p, t in after.items() if f"/{stage}/" in p} == {
        p: t for p, t in before.items() if f"/{stage}/" in p}, stage
  sim = {p: t for p, t in after.items() if "/sft_simulator/" in p}
  assert sim and all(t != before.get(p) for p, t in sim.items())  # rewritten from scratch
  st = json.loads((wd / "stages.json").read_text())
  assert st["sft_simulator"]["redos"] == 1 and st["sft_simulator"]["attempts"] == 1
  assert st["sft_agent"]["attempts"] == 1
  assert "stage sft_agent: done already" in capsys.readouterr().out


def test_unfinished_training_stage_resumes_with_a_changed_learning_rate(wd, capsys):
  """A crashed (killed) sft_agent attempt, rerun with a lower learning rate: allowed, recorded, and
  the killed attempt's time is added to the stage's wall time."""
  st = json.loads((wd / "stages.json").read_text())
  first = st["sft_agent"]["wall_seconds"]
  st["sft_agent"].update(done=False, running_since=time.time() - 5.0)  # as a SIGKILL leaves it
  del st["sft_simulator"]  # the stage after it never started
  (wd / "stages.json").write_text(json.dumps(st))
  shutil.rmtree(wd / "sft_simulator")
  with pytest.raises(InputErrors, match="model.agent.hidden_size"):  # not a resumable change
    pipeline.run(_cfg(model__agent__hidden_size=64), str(wd), SFT[:2])
  pipeline.run(_cfg(sft__learning_rate=1e-3), str(wd), SFT[:2])
  assert "resuming with changed sft.learning_rate" in capsys.readouterr().out
  e = json.loads((wd / "stages.json").read_text())["sft_agent"]
  assert e["done"] and e["attempts"] == 2 and e["killed_attempts"] == 1
  assert e["changes"] == [{"attempt": 2, "sft.learning_rate": [0.003, 0.001]}]
  assert e["wall_seconds"] > first and "running_since" not in e
  assert Workdir(wd).wall_seconds()["sft_agent"] == e["wall_seconds"]


def test_wall_seconds_sum_over_attempts(tmp_path):
  w = Workdir(tmp_path)
  w.open({})
  w.begin("dpo", {"dpo.beta": 0.1})
  w.end("dpo", 2.0, done=False)  # failed attempt
  w.begin("dpo", {"dpo.beta": 0.1})
  w.end("dpo", 3.5, done=True)
  e = w.stages()["dpo"]
  assert e["attempts"] == 2 and e["wall_seconds"] == 5.5 and w.wall_seconds() == {"dpo": 5.5}


def test_pairs_in_the_old_place_are_a_one_line_error(tmp_path):
  """A workdir from before the pairs moved to DIR/pairs (DESIGN's contract) is refused with the
  command that moves them, not read as a search that found no pairs."""
  from engage_jax import pipeline
  from engage_jax.errors import InputError
  from engage_jax.workdir import Workdir
  (tmp_path / "search" / "pairs").mkdir(parents=True)
  (tmp_path / "search" / "pairs" / "shard-00000.jsonl").write_text("{}\n")
  with pytest.raises(InputError, match="old place .*search/pairs; move them: mv "):
    pipeline.pair_files(Workdir(str(tmp_path)))
  (tmp_path / "search" / "pairs").rename(tmp_path / "pairs")
  assert [f.name for f in pipeline.pair_files(Workdir(str(tmp_path)))] == ["shard-00000.jsonl"]


def test_dpo_with_zero_pairs_is_one_line_and_the_dpo_agent_is_the_sft_agent(wd, capsys):
  """A search that found no pairs: the DPO stage says so in one line naming the pairs directory and
  the settings to change, and the DPO agent is the SFT agent (the same weights), not a crash."""
  from safetensors.numpy import load_file
  (wd / "pairs").mkdir()
  (wd / "pairs" / "shard-00000.jsonl").write_text("")  # what the search writes for a shard without pairs
  summary = pipeline.stage_dpo(_cfg(), Workdir(str(wd)))
  assert summary == {"pairs": 0, "skipped": "no preference pairs"}
  lines = [x for x in capsys.readouterr().out.splitlines() if "no preference pairs" in x]
  assert len(lines) == 1 and f"{wd / 'pairs'}:" in lines[0] and "config.search.margin" in lines[0], lines
  a = load_file(wd / "sft_agent" / "hf" / "model.safetensors")
  b = load_file(wd / "dpo_agent" / "hf" / "model.safetensors")
  assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)

