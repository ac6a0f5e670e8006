"""One validation pass over a pipeline config before anything is written.

    config_check.check(cfg)          # InputErrors listing every problem, or None
    config_check.check_workdir(dir)  # InputError if DIR cannot be a work directory

The schema's checks (engage_jax/schema.py: every key's type and range, missing and unknown keys,
the sections' cross-key checks) and then what the schema cannot know: model / tokenizer / adapter
paths (an HF directory with a valid config.json / tokenizer.json, a PEFT adapter whose r is the
rank, or a `.gguf` file), the mesh against the device count and the batch sizes, and the data
files (each split parsed, none empty). Each problem names its key
(`config.search.agent_sampling.top_p`) or file and the bad value; a key renamed since
(`RENAMED`, e.g. `search.sim_temperature`) names its new key.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax

from engage_jax import schema
from engage_jax.data import esconv, p4g
from engage_jax.errors import InputError, InputErrors
from engage_jax.fields import is_int
from engage_jax.sampling import SamplingParams

DATA_FILES = {"esconv": ("train.txt", "valid.txt", "test.txt"), "p4g": ("full_dialog.csv", "full_info.csv")}
GGUF_MAGIC = b"GGUF"
SAMPLING_KEYS = tuple(f.name for f in schema.key_fields(SamplingParams))  # <section>.<role>_sampling
# flat keys of config.search / config.eval before the sampling sub-sections -> their new names
RENAMED = {f"{s}.{prefix}{k}": f"{s}.{role}_sampling.{k}" for s in ("search", "eval")
           for role, prefix in (("agent", ""), ("simulator", "sim_")) for k in SAMPLING_KEYS}


def renamed(key: str) -> str | None:
  """The current name of a renamed config key (`search.sim_temperature` ->
  `search.simulator_sampling.temperature`), or None."""
  return RENAMED.get(key)


class _Checker:
  """Collects problems (InputErrors naming `config.<key>` or a file)."""

  def __init__(self, cfg):
    self.cfg, self.problems = cfg, []

  def add(self, key: str, what: str) -> None:
    self.problems.append(InputError(what, f"config.{key}"))


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
  """A config.json's sizes: positive, heads dividing hidden, kv heads dividing heads, even head_dim."""
  for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
    v = d.get(f)
    if not is_int(v) or v < 1:
      c.add(key, f"{f} must be a positive integer in {source}; got {v!r}")
      return
  for f, what in schema.dims_problems(d, where=f" (in {source})"):
    c.add(key, f"{f}: {what}")


def _adapter(c: _Checker, k: str) -> None:
  """model.<role>.lora.path: a PEFT adapter dir whose r equals lora.rank."""
  lora = c.cfg.model[k.split(".")[1]].lora
  path, rank = lora.path, lora.rank
  if not (path and rank > 0):
    return
  cfg_file = Path(path) / "adapter_config.json"
  obj, bad = _json_object(cfg_file) if cfg_file.is_file() else (None, f"no adapter_config.json in {path!r}")
  if bad:
    c.add(f"{k}.lora.path", bad)
  elif obj.get("r") != rank:
    c.add(f"{k}.lora.rank", f"must equal the adapter's r={obj.get('r')!r} ({cfg_file}); got {rank}")


# Each runs only on a config whose keys the schema found valid.
def _model(c: _Checker) -> None:
  for role in ("agent", "simulator"):
    k = f"model.{role}"
    _adapter(c, k)
    path = c.cfg.model[role].path
    if not path:
      continue
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


def _tokenizer(c: _Checker) -> None:
  path = c.cfg.tokenizer.path
  if not path:
    return
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


def _mesh(c: _Checker, devices: int | None) -> None:
  sizes = {a: c.cfg.mesh[a] for a in ("data", "fsdp", "tensor")}
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
    b = c.cfg[s].batch_size
    if b % extent:
      c.add(f"{s}.batch_size", f"{b} is not divisible by the data x fsdp mesh extent {extent}")


# ---------------------------------------------------------------------------- data
def _data(c: _Checker, load: bool) -> None:
  """The real data's files (data.source esconv | p4g; the schema has checked the keys)."""
  src, path = c.cfg.data.source, c.cfg.data.path
  if src not in DATA_FILES:
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
  if load and not c.problems:
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
  for key, what in schema.problems(cfg):
    if key in RENAMED:
      what = f"renamed: set config.{RENAMED[key]} instead"
    c.add(key, what)
  if c.problems:   # the files, devices and data are read only for a config whose keys are valid
    return c.problems
  _model(c)
  _tokenizer(c)
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
