"""One validation pass over a pipeline config (configs/base.py schema) before anything is written.

    config_check.check(cfg)          # InputErrors listing every problem, or None
    config_check.check_workdir(dir)  # InputError if DIR cannot be a work directory

Every section is checked: types, ranges of step counts, batch sizes, sampling settings and model
dimensions, the mesh against the device count, batch sizes against the mesh, model / tokenizer
paths (an HF directory with a valid config.json / tokenizer.json, or a `.gguf` file) and the data
files (each split parsed, none empty). Each problem names its key
(`config.search.agent_sampling.top_p`) or file and the bad value; a key renamed since
(`RENAMED`, e.g. `search.sim_temperature`) names its new key.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable

import jax

from engage_jax.data.dialogue import TASKS
from engage_jax.errors import InputError, InputErrors
from engage_jax.models.config import SUPPORTED_MODEL_TYPES as MODEL_TYPES, DTYPE_NAMES
from engage_jax.rewards import CONFIG_READOUTS
from engage_jax.train.config import LOSS_TYPES
from engage_jax.search.selection import SELECTION_RULES
from engage_jax.data import esconv, p4g
from engage_jax.tokenizer import SPECIAL_TOKENS
from engage_jax.search.run import config_from_section
SOURCES = {"sandbox": None, "esconv": "es", "p4g": "p4g"}
DATA_FILES = {"esconv": ("train.txt", "valid.txt", "test.txt"), "p4g": ("full_dialog.csv", "full_info.csv")}
GGUF_MAGIC = b"GGUF"
_MISSING = object()


class _Checker:
  """Collects problems; `get` reads a dotted key, the `need_*` helpers add one problem each."""

  def __init__(self, cfg):
    self.cfg, self.problems = cfg, []

  def add(self, key: str, what: str) -> None:
    self.problems.append(InputError(what, f"config.{key}"))

  def get(self, key: str) -> Any:
    node = self.cfg
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        self.add(key, "missing from the config")
        return _MISSING
    return node

  def need(self, key: str, ok: Callable[[Any], bool], what: str) -> Any:
    v = self.get(key)
    if v is _MISSING:
      return None
    try:
      good = ok(v)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.add(key, f"{what}; got {v!r}")
      return None
    return v

  def int_ge(self, key: str, lo: int, note: str = "") -> int | None:
    return self.need(key, lambda v: _is_int(v) and v >= lo, f"must be an integer >= {lo}{note}")

  def num(self, key: str, lo: float, hi: float = math.inf, lo_open: bool = False,
          hi_open: bool = False) -> float | None:
    lb, rb = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    text = f"must be a number in {lb}{lo:g}, {hi:g}{rb}" if hi != math.inf else (
        f"must be a number {'>' if lo_open else '>='} {lo:g}")

    def ok(v):
      if not _is_num(v) or not math.isfinite(v):
        return False
      return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return self.need(key, ok, text)

  def one_of(self, key: str, options) -> Any:
    return self.need(key, lambda v: v in options, f"must be one of {', '.join(map(str, options))}")

  def boolean(self, key: str) -> Any:
    return self.need(key, lambda v: isinstance(v, bool), "must be true or false")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------- sections
def _top(c: _Checker) -> None:
  c.one_of("task", TASKS)
  c.int_ge("seed", 0)
  c.boolean("rollout.kv_cache")


def _train(c: _Checker, s: str) -> None:
  c.int_ge(f"{s}.batch_size", 1)
  c.num(f"{s}.learning_rate", 0.0, lo_open=True)
  c.int_ge(f"{s}.warmup_steps", 0)
  c.num(f"{s}.weight_decay", 0.0)
  c.num(f"{s}.grad_clip", 0.0)
  c.int_ge(f"{s}.grad_accum", 1)
  c.int_ge(f"{s}.log_every", 1)
  c.int_ge(f"{s}.checkpoint_every", 0, " (0: only at the end)")
  c.int_ge(f"{s}.keep_checkpoints", 0, " (0: keep all)")
  if "min_bucket" in c.cfg[s]:
    c.int_ge(f"{s}.min_bucket", 1)


def _sft(c: _Checker) -> None:
  for role in ("agent", "simulator"):
    steps = c.int_ge(f"sft.{role}_steps", 0, " (0: the pretrained model as it is)")
    path = c.get(f"model.{role}.path")
    if steps == 0 and path is not _MISSING and not path:
      c.add(f"sft.{role}_steps", f"0 (no SFT) needs a pretrained config.model.{role}.path; got 0")
  c.int_ge("sft.eval_every", 0)
  _train(c, "sft")


def _dpo(c: _Checker) -> None:
  c.num("dpo.beta", 0.0, lo_open=True)
  c.one_of("dpo.loss_type", LOSS_TYPES)
  c.num("dpo.label_smoothing", 0.0, 0.5, hi_open=True)
  c.num("dpo.rpo_alpha", 0.0)
  c.num("dpo.heldout_fraction", 0.0, 0.5)
  c.int_ge("dpo.steps", 0, " (0: num_epochs passes)")
  c.int_ge("dpo.num_epochs", 1)
  c.int_ge("dpo.max_len", 4)
  _train(c, "dpo")


SAMPLING_ROLES = ("agent", "simulator")     # sub-sections <section>.<role>_sampling
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k")  # configs/base.py sampling_config
# flat keys of config.search / config.eval before the sampling sub-sections → their new names
RENAMED = {f"{s}.{prefix}{k}": f"{s}.{role}_sampling.{k}" for s in ("search", "eval")
           for role, prefix in (("agent", ""), ("simulator", "sim_")) for k in SAMPLING_KEYS}


def renamed(key: str) -> str | None:
  """The current name of a renamed config key (`search.sim_temperature` →
  `search.simulator_sampling.temperature`), or None."""
  return RENAMED.get(key)


def _sampling(c: _Checker, s: str) -> None:
  """Section `s` (search | eval): the two sampling sub-sections, prompt length, conditions."""
  for key in c.cfg[s]:
    if f"{s}.{key}" in RENAMED:
      c.add(f"{s}.{key}", f"renamed: set config.{RENAMED[f'{s}.{key}']} instead")
  for role in SAMPLING_ROLES:
    k = f"{s}.{role}_sampling"
    sub = c.get(k)
    if sub is _MISSING:
      continue
    extra = sorted(set(sub) - set(SAMPLING_KEYS)) if hasattr(sub, "keys") else []
    if extra:
      c.add(f"{k}.{extra[0]}", f"unknown sampling key; the keys are {', '.join(SAMPLING_KEYS)}")
    c.int_ge(f"{k}.max_new_tokens", 1)
    c.num(f"{k}.temperature", 0.0)
    c.num(f"{k}.top_p", 0.0, 1.0, lo_open=True)
    c.int_ge(f"{k}.top_k", 0, " (0: off)")
  c.int_ge(f"{s}.max_prompt_len", 1)
  c.int_ge(f"{s}.n_conditions", 1)


def _search(c: _Checker) -> None:
  before = len(c.problems)
  _sampling(c, "search")
  c.int_ge("search.trees_per_shard", 1)
  c.int_ge("search.trees_in_flight", 0)
  c.int_ge("search.k", 2, " (pairs need siblings)")
  c.int_ge("search.budget", 1)
  c.int_ge("search.max_depth", 1)
  c.int_ge("search.max_turns", 1)
  c.one_of("search.selection", tuple(SELECTION_RULES))
  c.num("search.c", 0.0)
  c.num("search.margin", 0.0)
  v = c.get("search.prune_similarity")
  if v is not None and v is not _MISSING:
    c.num("search.prune_similarity", 0.0, 1.0, lo_open=True)
  c.int_ge("search.max_live", 0, " (0: no cap)")
  if len(c.problems) == before:
    try:
      config_from_section(c.cfg.search, seed=c.cfg.seed)
    except (ValueError, TypeError) as e:
      c.add("search", str(e))


def _eval(c: _Checker) -> None:
  _sampling(c, "eval")
  c.int_ge("eval.samples_per_condition", 1)
  c.int_ge("eval.max_agent_turns", 1)
  c.int_ge("eval.batch_size", 0, " (0: all conditions in one call)")
  c.boolean("eval.heldout_simulator")
  c.int_ge("search_dpo_rounds", 1)


def _reward(c: _Checker) -> None:
  pat = c.need("reward.es_pattern", lambda v: isinstance(v, str), "must be a string (empty: the default)")
  if pat:
    try:
      re.compile(pat)
    except re.error as e:
      c.add("reward.es_pattern", f"not a valid regular expression ({e}); got {pat!r}")
  c.int_ge("reward.es_last_n", 1)
  c.num("reward.donation_cap", 0.0, lo_open=True)
  if c.one_of("reward.readout", CONFIG_READOUTS) == "expected" and c.get("task") == "es":
    c.add("reward.readout", "'expected' needs task p4g (ES keeps its regex); got task 'es'")


def _json_object(path: Path) -> tuple[dict | None, str | None]:
  """(the JSON object in `path`, None) or (None, what is wrong)."""
  try:
    obj = json.loads(path.read_text(encoding="utf-8"))
  except UnicodeDecodeError as e:
    return None, f"{path} is not UTF-8 (byte {e.start})"
  except json.JSONDecodeError as e:
    return None, f"{path} is not valid JSON (line {e.lineno}: {e.msg})"
  except OSError as e:
    return None, f"cannot read {path} ({e.strerror})"
  if not isinstance(obj, dict):
    return None, f"{path} must hold a JSON object, not a {type(obj).__name__}"
  return obj, None


def _gguf(c: _Checker, key: str, p: Path) -> None:
  try:
    with open(p, "rb") as f:
      magic = f.read(4)
  except OSError as e:
    c.add(key, f"cannot read {p} ({e.strerror})")
    return
  if magic != GGUF_MAGIC:
    c.add(key, f"{p} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")


def _dims(c: _Checker, key: str, d: dict, source: str) -> None:
  """Positive sizes, heads dividing hidden, kv heads dividing heads, even head_dim."""
  vals = {}
  for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
    v = d.get(f)
    if not _is_int(v) or v < 1:
      c.add(f"{key}.{f}" if source == "config" else key,
            f"{f} must be a positive integer{'' if source == 'config' else ' in ' + source}; got {v!r}")
    else:
      vals[f] = v
  kv = d.get("num_key_value_heads") or vals.get("num_attention_heads")
  where = lambda f: f"{key}.{f}" if source == "config" else key
  suffix = "" if source == "config" else f" (in {source})"
  if not _is_int(kv) or kv < 1:
    c.add(where("num_key_value_heads"), f"must be a positive integer{suffix}; got {kv!r}")
    return
  h, n = vals.get("hidden_size"), vals.get("num_attention_heads")
  if h and n:
    if n % kv:
      c.add(where("num_key_value_heads"), f"{kv} must divide num_attention_heads={n}{suffix}")
    head_dim = d.get("head_dim") or (h // n if h % n == 0 else None)
    if head_dim is None:
      c.add(where("num_attention_heads"), f"{n} must divide hidden_size={h}{suffix}")
    elif head_dim % 2:
      c.add(where("num_attention_heads"), f"head_dim {head_dim} must be even (RoPE){suffix}")


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # engage_jax.models.lora.TARGETS


def _lora(c: _Checker, k: str) -> None:
  """model.<role>.lora (engage_jax.models.lora; kept free of jax imports): rank >= 0; with rank > 0
  alpha, dropout (0 only), init and targets; `path` a PEFT adapter dir whose r equals rank."""
  if c.cfg.model[k.split(".")[1]].get("lora") is None:
    return
  k = f"{k}.lora"
  rank = c.int_ge(f"{k}.rank", 0, " (0 = LoRA off)")
  path = c.need(f"{k}.path", lambda v: isinstance(v, str), "must be a string (empty: a fresh adapter)")
  if rank == 0 and path:
    c.add(f"{k}.rank", "must be > 0 (the adapter's r) when lora.path is set; got 0")
  if not rank:
    return
  c.num(f"{k}.alpha", 0.0, lo_open=True)
  c.need(f"{k}.dropout", lambda v: v == 0, "LoRA dropout is not implemented; must be 0.0")
  c.one_of(f"{k}.init", ("default", "random"))
  targets = c.need(f"{k}.targets", lambda v: isinstance(v, str) and v.strip(),
                   "must be a comma-separated list of projections")
  if targets:
    names = [t.strip().removesuffix("_proj") for t in targets.split(",") if t.strip()]
    bad = [t for t in names if t not in LORA_TARGETS]
    if bad:
      c.add(f"{k}.targets", f"{', '.join(bad)} match no projection (targets: {', '.join(LORA_TARGETS)}); "
                            f"got {targets!r}")
  if path:
    cfg_file = Path(path) / "adapter_config.json"
    obj, bad = _json_object(cfg_file) if cfg_file.is_file() else (None, f"no adapter_config.json in {path!r}")
    if bad:
      c.add(f"{k}.path", bad)
    elif obj.get("r") != rank:
      c.add(f"{k}.rank", f"must equal the adapter's r={obj.get('r')!r} ({cfg_file}); got {rank}")


def _model(c: _Checker) -> None:
  c.one_of("model.dtype", DTYPE_NAMES)
  c.one_of("model.param_dtype", DTYPE_NAMES)
  c.boolean("model.remat")
  c.boolean("model.scan_layers")
  for role in ("agent", "simulator"):
    k = f"model.{role}"
    _lora(c, k)
    path = c.need(f"{k}.path", lambda v: isinstance(v, str), "must be a string (empty: from scratch)")
    if path:
      p = Path(path)
      if p.suffix.lower() == ".gguf":
        if not p.is_file():
          c.add(f"{k}.path", f"no such GGUF file; got {path!r}")
        else:
          _gguf(c, f"{k}.path", p)
      elif not p.is_dir():
        c.add(f"{k}.path", f"not a model directory or .gguf file; got {path!r}")
      elif not (p / "config.json").is_file():
        c.add(f"{k}.path", f"no config.json in {path!r}")
      else:
        obj, bad = _json_object(p / "config.json")
        if bad:
          c.add(f"{k}.path", bad)
        else:
          _dims(c, f"{k}.path", obj, str(p / "config.json"))
      continue
    c.one_of(f"{k}.model_type", MODEL_TYPES)
    for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads"):
      c.int_ge(f"{k}.{f}", 1)
    c.num(f"{k}.rope_theta", 0.0, lo_open=True)
    c.boolean(f"{k}.tie_word_embeddings")
    mpe = c.int_ge(f"{k}.max_position_embeddings", 1)
    ml = c.get("data.max_len")
    if mpe and _is_int(ml) and ml > mpe:
      c.add(f"{k}.max_position_embeddings", f"must be >= data.max_len={ml}; got {mpe}")
    d = {f: c.cfg.model[role].get(f) for f in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads")}
    if all(_is_int(v) and v >= 1 for v in d.values()):
      _dims(c, k, d, "config")


def _tokenizer(c: _Checker) -> None:
  path = c.need("tokenizer.path", lambda v: isinstance(v, str), "must be a string (empty: train a BPE)")
  if path:
    p = Path(path)
    if p.suffix.lower() == ".gguf":
      if p.is_file():
        _gguf(c, "tokenizer.path", p)
      else:
        c.add("tokenizer.path", f"no such GGUF file; got {path!r}")
    elif not (p / "tokenizer.json").is_file():
      c.add("tokenizer.path", f"no tokenizer.json in {path!r}")
    else:
      for name in ("tokenizer.json", "tokenizer_config.json"):
        if (p / name).exists():
          _, bad = _json_object(p / name)
          if bad:
            c.add("tokenizer.path", bad)
  else:
    c.int_ge("tokenizer.vocab_size", 257 + len(SPECIAL_TOKENS), " (bytes + special tokens + merges)")


def _mesh(c: _Checker, devices: int | None) -> None:
  sizes = {a: c.need(f"mesh.{a}", lambda v: _is_int(v) and (v >= 1 or v == -1), "must be >= 1 or -1 (the rest)")
           for a in ("data", "fsdp", "tensor")}
  if any(v is None for v in sizes.values()):
    return
  if list(sizes.values()).count(-1) > 1:
    c.add("mesh", f"at most one axis may be -1; got {sizes}")
    return
  if devices is None:
    devices = jax.device_count()
  known = math.prod(v for v in sizes.values() if v != -1)
  if -1 in sizes.values():
    if devices % known:
      c.add("mesh", f"{sizes} does not divide the {devices} devices")
      return
    sizes = {a: (devices // known if v == -1 else v) for a, v in sizes.items()}
  elif known != devices:
    c.add("mesh", f"{sizes} needs {known} devices, there are {devices}")
    return
  extent = sizes["data"] * sizes["fsdp"]
  for s in ("sft", "dpo"):
    b = c.get(f"{s}.batch_size")
    if _is_int(b) and b >= 1 and b % extent:
      c.add(f"{s}.batch_size", f"{b} is not divisible by the data x fsdp mesh extent {extent}")


# ---------------------------------------------------------------------------- data
def _data(c: _Checker, load: bool) -> None:
  before = len(c.problems)
  src = c.one_of("data.source", tuple(SOURCES))
  c.int_ge("data.max_len", 8)
  c.boolean("data.skip_bad")
  c.int_ge("data.max_train_dialogues", 0, " (0: all)")
  if "max_valid_dialogues" in c.cfg.data:
    c.int_ge("data.max_valid_dialogues", 0, " (0: all)")
  if "condition_keys" in c.cfg.data:
    c.need("data.condition_keys", lambda v: isinstance(v, str), "must be a comma-separated string")
  if src is None:
    return
  if src == "sandbox":
    c.int_ge("data.sandbox_train", 1)
    c.int_ge("data.sandbox_valid", 0)
    if "sandbox_world" in c.cfg.data:
      c.one_of("data.sandbox_world", ("default", "delayed"))
    return
  task = c.get("task")
  if task != SOURCES[src] and task in TASKS:
    c.add("data.source", f"{src!r} needs config.task={SOURCES[src]!r}; got task={task!r}")
  path = c.need("data.path", lambda v: isinstance(v, str) and v, f"is required for data.source={src!r}")
  if not path:
    return
  d = esconv.esconv_dir(path) if src == "esconv" else p4g.p4g_dir(path)
  missing = [n for n in DATA_FILES[src] if not (d / n).is_file()]
  if missing:
    c.add("data.path", f"missing {', '.join(missing)}; got {path!r}")
    return
  empty = [n for n in DATA_FILES[src] if (d / n).stat().st_size == 0]
  if empty:
    for n in empty:
      c.problems.append(InputError("the file is empty", str(d / n)))
    return
  if load and len(c.problems) == before:
    _load_splits(c, src, path)


def _load_splits(c: _Checker, src: str, path: str) -> None:
  """Parses every split (as the pipeline will); a parse error or an empty split is a problem."""
  loader = esconv if src == "esconv" else p4g
  skip_bad = bool(c.cfg.data.skip_bad)
  for split in ("train", "valid", "test"):
    try:
      got = loader.load_split(path, split, skip_bad=skip_bad)
    except InputError as e:
      c.problems.append(e)
      return
    except (ValueError, OSError) as e:
      c.problems.append(InputError(str(e), f"config.data.path={path!r}"))
      return
    if not got:
      where = str(esconv.esconv_dir(path) / f"{split}.txt") if src == "esconv" else str(p4g.p4g_dir(path))
      note = f" ({got.skipped} bad records skipped)" if got.skipped else ""
      c.problems.append(InputError(f"the {split} split has no dialogues{note}", where))


# ---------------------------------------------------------------------------- entry points
def problems(cfg, *, devices: int | None = None, load_data: bool = True) -> list[InputError]:
  """Every problem of `cfg` (empty list: valid). devices: the device count (default: JAX's)."""
  c = _Checker(cfg)
  _top(c)
  for fn in (_sft, _dpo, _search, _eval, _reward, _model, _tokenizer):
    fn(c)
  _mesh(c, devices)
  _data(c, load_data)
  return c.problems


def check(cfg, **kw) -> None:
  """Raises InputErrors (one entry per problem) unless `cfg` is valid. Writes nothing."""
  found = problems(cfg, **kw)
  if found:
    raise InputErrors(found)


def check_workdir(path: str | os.PathLike) -> None:
  """InputError if `path` is a file, lies under a file, or cannot be created / written."""
  where = f"--workdir={os.fspath(path)}"
  p = Path(path)
  if p.exists() and not p.is_dir():
    raise InputError("the work directory is a file, not a directory", where)
  q = p
  while not q.exists():
    if q.parent == q:
      break
    q = q.parent
  if not q.is_dir():
    raise InputError(f"{q} is a file, so the work directory cannot be created there", where)
  if not os.access(q, os.W_OK | os.X_OK):
    raise InputError(f"{q} is not writable", where)
