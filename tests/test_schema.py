"""The config schema (engage_jax/schema.py): every key defined once, with a doc and a check; the
launchers' defaults are the library's; configs state only what differs from the defaults."""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from engage_jax import build, chat_cache, evaluate, rollout, sampling, schema
from engage_jax.models.lora import LoraConfig
from engage_jax.rewards import RewardSettings
from engage_jax.search.imcts import SearchConfig
from engage_jax.search.env import ModelEnv
from engage_jax.search.run import config_from_section, run_search
from engage_jax.train.dpo_loss import dpo_loss
from engage_jax.train.config import DPOConfig, TrainConfig
from engage_jax.workdir import flatten
from tests import config_files

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {f.name for f in dataclasses.fields(schema.PipelineConfig)}


def _schema_classes():
  """Every dataclass reachable from PipelineConfig, with their dataclass bases."""
  seen, todo = [], [schema.PipelineConfig()]
  while todo:
    obj = todo.pop()
    for cls in type(obj).__mro__:
      if dataclasses.is_dataclass(cls) and cls not in seen:
        seen.append(cls)
    for f in dataclasses.fields(obj):
      v = getattr(obj, f.name)
      if dataclasses.is_dataclass(v):
        todo.append(v)
  return seen


def _default(f: dataclasses.Field):
  return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_base_config_is_the_schema_and_defines_no_value():
  assert config_files.get_config(REPO / "configs" / "base.py").to_dict() == schema.defaults().to_dict()
  tree = ast.parse((REPO / "configs" / "base.py").read_text())
  literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))]
  assert literals == [], f"configs/base.py defines values {literals}: defaults belong in the schema's fields"


def test_no_field_restates_an_inherited_default():
  """A subclass may give a key of its own section another default (DPOConfig.learning_rate), never the same one."""
  twice = []
  for cls in _schema_classes():
    own = inspect.get_annotations(cls)
    for base in cls.__mro__[1:]:
      if not dataclasses.is_dataclass(base):
        continue
      inherited = {f.name: f for f in dataclasses.fields(base)}
      for name in own:
        if name in inherited:
          mine = next(f for f in dataclasses.fields(cls) if f.name == name)
          if _default(mine) == _default(inherited[name]):
            twice.append(f"{cls.__name__}.{name} restates {base.__name__}.{name} = {_default(mine)!r}")
      break
  assert twice == []


def _config_of_source(path: Path, source: str) -> dict:
  """The flattened get_config() of configs file `path` with its text replaced by `source`."""
  return flatten(config_files.get_config(path, source).to_dict())


def _restated(path: Path) -> list[str]:
  """Each `<name>.<key>... = <literal>` of a config file whose removal leaves its config the same:
  a value that the config it starts from (base or another file) already has."""
  source = path.read_text()
  lines = source.splitlines(keepends=True)
  whole = _config_of_source(path, source)
  out = []
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)):
      continue
    try:
      ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError):
      continue
    first, last = node.lineno - 1, node.end_lineno
    indent = lines[first][:len(lines[first]) - len(lines[first].lstrip())]
    probe = "".join(lines[:first] + [indent + "pass\n"] + ["\n"] * (last - first - 1) + lines[last:])
    if _config_of_source(path, probe) == whole:
      out.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[first].strip()}")
  return out


def test_config_files_state_only_what_differs_from_the_defaults():
  files = [p for p in sorted((REPO / "configs").rglob("*.py")) if p.name != "base.py" and "def get_config" in p.read_text()]
  assert len(files) > 5
  restated = [hit for p in files for hit in _restated(p)]
  assert restated == []


def _config_gets(path: Path):
  """`<cfg>.<section>[...].get("<key>", <default>)` calls: a second default for a schema key."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
      continue
    chain, t = [], node.func.value
    while isinstance(t, ast.Attribute | ast.Subscript):
      if isinstance(t, ast.Attribute):
        chain.append(t.attr)
      t = t.value
    if isinstance(t, ast.Name) and t.id in ("cfg", "config", "c") and chain and chain[-1] in SECTIONS:
      out.append(f"{path.relative_to(REPO)}:{node.lineno}: .get({node.args[0].value!r}, ...)")
  return out


def test_the_code_reads_config_keys_without_a_second_default():
  found = [hit for root in ("engage_jax", "launch") for p in sorted((REPO / root).rglob("*.py"))
           for hit in _config_gets(p)]
  assert found == []


def test_every_key_has_a_doc_and_a_check():
  missing = []

  def walk(obj, prefix):
    for f in schema.key_fields(obj):
      v = getattr(obj, f.name)
      if dataclasses.is_dataclass(v):
        walk(v, f"{prefix}{f.name}.")
        continue
      if not f.metadata.get("doc") or f.metadata.get("check") is None:
        missing.append(prefix + f.name)
  walk(schema.PipelineConfig(), "")
  assert missing == []
  assert len(schema.describe()) == len(flatten(schema.defaults().to_dict()))


def test_a_stage_function_gets_the_launchers_defaults():
  cfg = schema.defaults()
  sft = build.train_config(cfg, cfg.sft)
  assert sft == TrainConfig(max_len=cfg.data.max_len)
  assert build.train_config(cfg, cfg.dpo) == DPOConfig()
  assert config_from_section(cfg.search) == SearchConfig()
  assert RewardSettings.from_any(cfg.reward) == RewardSettings()
  assert LoraConfig.from_any(cfg.model.agent.lora) == LoraConfig()
  st = evaluate.eval_settings({"task": "es"})
  assert (st.max_agent_turns, st.samples_per_condition, st.batch_size) == (
      cfg.eval.max_agent_turns, cfg.eval.samples_per_condition, cfg.eval.batch_size)


@pytest.mark.parametrize("key,value,what", [
    ("dpo.rpo_alpha", -1.0, "must be a number >= 0"),
    ("search.similarity", "cosine", "must be one of difflib, jaccard"),
    ("sft.adam_b2", 1.0, "must be a number in [0, 1)"),
    ("model.agent.lora.targets", "q,nope", "must be a comma-separated list of projections"),
])
def test_a_bad_value_is_named_with_its_fields_check(key, value, what):
  cfg = schema.defaults()
  *parents, last = key.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[last] = value
  got = dict(schema.problems(cfg))
  assert list(got) == [key] and got[key].startswith(what), got


def test_an_unknown_key_and_a_missing_key_are_problems():
  d = schema.defaults().to_dict()
  d["sft"]["learning_rte"] = 1e-3
  del d["dpo"]["beta"]
  got = dict(schema.problems(d))
  assert got["sft.learning_rte"].startswith("unknown key; the keys are")
  assert got["dpo.beta"] == "missing from the config"
  assert schema.problems(schema.defaults()) == []


def _kw_defaults(fn) -> dict:
  return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def test_the_stage_functions_keyword_defaults_are_the_schemas():
  """A keyword default of a public stage function is its config key's default (a reference, not a copy)."""
  cfg = schema.defaults()
  sp = sampling.SamplingParams()
  for fn in (sampling.generate, chat_cache.ConversationCache.generate):
    kw = _kw_defaults(fn)
    assert {k: kw[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k")} == {
        k: getattr(sp, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
  assert {k: _kw_defaults(dpo_loss)[k] for k in ("beta", "loss_type", "label_smoothing")} == {
      k: cfg.dpo[k] for k in ("beta", "loss_type", "label_smoothing")}
  kw = _kw_defaults(run_search)
  assert (kw["trees_per_shard"], kw["trees_in_flight"]) == (cfg.search.trees_per_shard, cfg.search.trees_in_flight)
  kw = _kw_defaults(ModelEnv.from_config)
  assert (kw["max_prompt_len"], kw["kv_cache"]) == (cfg.search.max_prompt_len, cfg.rollout.kv_cache)
  speaker = {f.name: f.default for f in dataclasses.fields(rollout.Speaker)}
  assert (speaker["max_prompt_len"], speaker["kv_cache"]) == (cfg.eval.max_prompt_len, cfg.rollout.kv_cache)
