"""Preference pairs: read and validate pairs (TRL's conversational format) through `datasets`,
from JSON-lines files (the search's) or saved datasets (launch/export.py's, or anyone's), tokenise
them and bucket them into fixed-shape arrays: one code path for the pipeline and exported data.

Pair tokenisation: prompt = `tok.apply_chat(prompt, add_generation_prompt=True)`; completion =
the assistant message's tokens + the end-of-turn token (taken from the rendered chat, so it is
exactly what the template produces). Completions are cut to `max_completion_len` (default
max_len // 2) and the prompt is left-truncated so prompt + longest completion <= max_len.

Layout per pair: prompt left-padded to P, completions right-padded to C (bucketed, powers of two
from `min_bucket`); arrays `prompt_ids/prompt_mask [N, P]`, `chosen_ids/chosen_mask,
rejected_ids/rejected_mask [N, C]`, `pair_index [N]` (the pair's position in the files).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from engage_jax import buckets as buckets_lib
from engage_jax.data import hf_datasets
from engage_jax.fileio import atomic_write_jsonl
from engage_jax.errors import InputError

PAIR_KEYS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


def _check_messages(obj, field, where, single_assistant=False):
  if not isinstance(obj, list) or not obj:
    raise ValueError(f"{where}: {field!r} must be a non-empty list of messages")
  for m in obj:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
      raise ValueError(f"{where}: {field!r} messages need string 'role' and 'content', got {m!r:.80}")
  if single_assistant and (len(obj) != 1 or obj[0]["role"] != "assistant"):
    raise ValueError(f"{where}: {field!r} must hold exactly one assistant message")


def is_dataset_dir(path: str | os.PathLike) -> bool:
  """True for a directory written by `datasets` `save_to_disk` (e.g. launch/export.py --dataset_out)."""
  return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_info.json")) or
                                  os.path.isfile(os.path.join(path, "dataset_dict.json")))


def source_files(paths: str | Sequence[str]) -> list[str]:
  """The files whose bytes hold the pairs of `paths` (a dataset dir: its files), for cache keys."""
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  out = []
  for p in paths:
    if is_dataset_dir(p):
      out += sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and f.name != "README.md")
    else:
      out.append(os.fspath(p))
  return out


def _diagnose_jsonl(path: str) -> None:
  """Raises the first row of a JSON-lines file that `datasets` could not read, naming file:line
  (only called after `datasets` failed: it names neither)."""
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 at byte {e.start} of the line", where) from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object with prompt/chosen/rejected")
      _check_row(rec, where)


def _check_row(rec: dict, where: str) -> None:
  for key in ("prompt", "chosen", "rejected"):
    if rec.get(key) is None:
      raise ValueError(f"{where}: missing field {key!r}")
  _check_messages(rec["prompt"], "prompt", where)
  _check_messages(rec["chosen"], "chosen", where, single_assistant=True)
  _check_messages(rec["rejected"], "rejected", where, single_assistant=True)


def load_pairs(paths: str | Sequence[str], cache_dir: str | None = None
               ) -> tuple[datasets.Dataset, list[str]]:
  """Pairs as one `datasets.Dataset` (TRL conversational columns + whatever else the rows hold)
  and each row's place ("file:line", or "DIR row i"). `paths`: JSON-lines files (read with
  `datasets.load_dataset("json")`) and/or `save_to_disk` dataset dirs (`datasets.load_from_disk`;
  a DatasetDict: its "train" split). The pipeline's pairs and an exported or foreign dataset go
  through here, then `pairs_from_dataset`."""
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not paths:
    raise ValueError("no pairs files given")
  parts, where = [], []
  jsonl: list[str] = []

  def flush():
    if not jsonl:
      return
    lines = {}
    for path in jsonl:
      lines[path] = hf_datasets.nonblank_lines(path)
      if not lines[path]:
        raise ValueError(f"{path}: no pairs (empty file)")
    try:
      ds = hf_datasets.load_local("json", jsonl, cache=cache_dir)
    except Exception:  # datasets names no row: find it, else re-raise
      for path in jsonl:
        _diagnose_jsonl(path)
      raise
    parts.append(ds)
    where.extend(f"{path}:{n}" for path in jsonl for n in lines[path])
    jsonl.clear()

  for p in paths:
    p = os.fspath(p)
    if is_dataset_dir(p):
      flush()
      ds = datasets.load_from_disk(p)
      if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
          raise InputError(f"a DatasetDict without a 'train' split (splits: {list(ds)})", p)
        ds = ds["train"]
      if len(ds) == 0:
        raise InputError("no pairs (empty dataset)", p)
      parts.append(ds)
      where.extend(f"{p} row {i}" for i in range(len(ds)))
    elif os.path.isdir(p):
      raise InputError("a directory that is not a saved dataset (no dataset_info.json)", p)
    else:
      jsonl.append(p)
  flush()
  if len(parts) != 1:
    missing = [set(TRL_KEYS) - set(d.column_names) for d in parts]
    if any(missing):
      raise InputError(f"missing column(s) {sorted(set().union(*missing))}", paths[0])
    parts = [d.select_columns(list(TRL_KEYS) + [c for c in d.column_names if c not in TRL_KEYS]) for d in parts]
  ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
  if len(where) != len(ds):  # pyarrow read a row across lines: places by index
    where = [f"{paths[0]} row {i}" for i in range(len(ds))]
  return ds, where


TRL_KEYS = ("prompt", "chosen", "rejected")


def pairs_from_dataset(ds: datasets.Dataset, where: Sequence[str] | None = None) -> list[dict]:
  """Rows → pair dicts {"prompt", "chosen", "rejected", "meta"}; `meta` = the row's "meta" column
  (JSON-lines pairs) and every other non-TRL column (an exported dataset's search columns).
  InputError (a ValueError) naming the row's place on a missing column, a malformed message list,
  or a row repeated exactly, which would be trained on and counted twice."""
  where = where or [f"row {i}" for i in range(len(ds))]
  for key in TRL_KEYS:
    if key not in ds.column_names:
      raise InputError(f"missing field {key!r} (columns: {ds.column_names})", where[0] if where else "")
  extra = [c for c in ds.column_names if c not in TRL_KEYS and c != "meta"]
  out, seen = [], {}
  for i, row in enumerate(ds):
    _check_row(row, where[i])
    meta = dict(row.get("meta") or {})
    meta.update((c, row[c]) for c in extra)
    rec = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"], "meta": meta}
    key = json.dumps(rec, sort_keys=True)
    if key in seen:
      raise InputError(f"duplicate pair: the same row as {seen[key]} (remove one)", where[i])
    seen[key] = where[i]
    out.append(rec)
  return out


def read_pair_files(paths: str | Sequence[str]) -> list[dict]:
  """All pairs of JSON-lines files and/or saved dataset dirs, in order (`load_pairs` →
  `pairs_from_dataset`). InputError (a ValueError) naming file and line on bad input: invalid
  UTF-8 or JSON, a missing field, an empty file, or a row repeated exactly (in any of them)."""
  return pairs_from_dataset(*load_pairs(paths))


def tree_key(pair: dict) -> str:
  """The search tree a pair came from: meta.condition_id (one tree per condition), else
  meta.tree_id, else the conversation's opening (system prompt + first message)."""
  meta = pair.get("meta") or {}
  for k in ("condition_id", "tree_id"):
    if meta.get(k) is not None:
      return f"{k}={meta[k]}"
  return "prompt=" + json.dumps(pair["prompt"][:2], sort_keys=True)


def split_heldout(pairs: Sequence[dict], fraction: float) -> tuple[list[int], list[int]]:
  """Deterministic held-out split by tree (`tree_key`), so no held-out pair's tree is trained on:
  the trees are ordered by the SHA-256 of their key and the first round(fraction × trees) (at
  least 1 when fraction > 0, always leaving one for training) are held out. Returns (train
  indices, held-out indices) into `pairs`, each ascending; fraction 0 or one tree: ([all], [])."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
  keys = [tree_key(p) for p in pairs]
  trees = sorted(set(keys), key=lambda k: hashlib.sha256(k.encode()).hexdigest())
  n = 0 if fraction == 0 or len(trees) < 2 else min(len(trees) - 1, max(1, round(fraction * len(trees))))
  held = set(trees[:n])
  return ([i for i, k in enumerate(keys) if k not in held], [i for i, k in enumerate(keys) if k in held])


def write_pairs(path: str, pairs: Sequence[dict]) -> str:
  """Pairs as JSON lines (atomically)."""
  atomic_write_jsonl(path, list(pairs))
  return path


def _completion(full: list[int], gen: list[int], content_ids: list[int], eot: int) -> list[int]:
  if full[:len(gen)] == gen:
    comp = full[len(gen):]
    if eot in comp:
      return comp[:comp.index(eot) + 1]
    return comp + [eot]
  return content_ids + [eot]


def tokenize_pairs(pairs: Sequence[dict], tok, max_len: int, max_completion_len: int = 0,
                   min_bucket: int = 16) -> dict[tuple[int, int], dict[str, np.ndarray]]:
  """Bucketed pair arrays {(P, C): {PAIR_KEYS..., "pair_index" [N]}} (see module docstring)."""
  cmax = max_completion_len or max_len // 2
  if cmax >= max_len:
    raise ValueError(f"max_completion_len {cmax} must be < max_len {max_len}")
  eot = tok.end_of_turn_id
  texts = []
  for p in pairs:
    texts.append(tok.render_chat(p["prompt"], add_generation_prompt=True))
    texts.append(tok.render_chat(p["prompt"] + p["chosen"]))
    texts.append(tok.render_chat(p["prompt"] + p["rejected"]))
    texts.append(p["chosen"][0]["content"])
    texts.append(p["rejected"][0]["content"])
  enc = tok.encode_batch(texts)
  rows = []
  for i in range(len(pairs)):
    gen, fc, fr, cc, cr = enc[5 * i:5 * i + 5]
    c = _completion(fc, gen, cc, eot)[:cmax]
    r = _completion(fr, gen, cr, eot)[:cmax]
    prompt = gen[-(max_len - max(len(c), len(r))):]
    rows.append((prompt, c, r))
  p_buckets = buckets_lib.ladder(max_len, min_bucket)
  c_buckets = buckets_lib.ladder(cmax, min_bucket)
  groups: dict[tuple[int, int], list[int]] = {}
  for i, (p, c, r) in enumerate(rows):
    key = (buckets_lib.fit(len(p), p_buckets), buckets_lib.fit(max(len(c), len(r)), c_buckets))
    groups.setdefault(key, []).append(i)
  pad = tok.pad_id
  out = {}
  for (pl, cl), idx in sorted(groups.items()):
    n = len(idx)
    a = {"prompt_ids": np.full((n, pl), pad, np.int32), "prompt_mask": np.zeros((n, pl), np.int32),
         "chosen_ids": np.full((n, cl), pad, np.int32), "chosen_mask": np.zeros((n, cl), np.int32),
         "rejected_ids": np.full((n, cl), pad, np.int32), "rejected_mask": np.zeros((n, cl), np.int32),
         "pair_index": np.asarray(idx, np.int32)}
    for j, i in enumerate(idx):
      p, c, r = rows[i]
      a["prompt_ids"][j, pl - len(p):] = p
      a["prompt_mask"][j, pl - len(p):] = 1
      a["chosen_ids"][j, :len(c)] = c
      a["chosen_mask"][j, :len(c)] = 1
      a["rejected_ids"][j, :len(r)] = r
      a["rejected_mask"][j, :len(r)] = 1
    out[(pl, cl)] = a
  return out


def count_pair_tokens(batch) -> float:
  """Tokens of a pair batch for tokens/s: the prompt twice (chosen and rejected rows) + both completions."""
  return float(2 * np.sum(batch["prompt_mask"]) + np.sum(batch["chosen_mask"]) + np.sum(batch["rejected_mask"]))
