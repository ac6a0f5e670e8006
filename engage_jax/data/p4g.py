"""PersuasionForGood loader (Wang et al., ACL 2019): `full_dialog.csv` + `full_info.csv`.

Each of the 1,017 dialogues becomes a `Dialogue` (task "p4g", id = `B2`): `B4 == 0` rows
(persuader) are agent turns, `B4 == 1` rows (persuadee) user turns, in file order (consecutive
same-role rows merged). condition = the persuadee's persona columns of `full_info.csv` (Big-Five,
moral foundations, Schwartz values, decision style, demographics; the ".x" suffix dropped; values
kept as the CSV strings; empty cells omitted). outcome = {donation_raw: `B6` of the persuadee row,
donation: clipped to [0, 2], num_turns: `B7`, persuader_donation: `B6` of the persuader row}.

Both files are read with `datasets.load_dataset("csv")` into all-string Features (the header names
the columns; cells kept as written, "NA" included), then checked row by row.

Split: deterministic by hashing the dialogue id (sha1 → [0, 100): < 80 train, < 90 valid, else
test). Bad rows raise a ValueError naming the file, CSV line, dialogue id and field;
`skip_bad=True` drops the affected dialogues and reports them (`LoadedDialogues.skipped/errors`).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from engage_jax.data import hf_datasets
from engage_jax.data.dialogue import AGENT, USER, Dialogue, LoadedDialogues, Turn, merge_consecutive
from engage_jax.errors import InputError
from engage_jax.fileio import line_of as _line_of

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (80, 10, 10)  # percent
DONATION_CAP = 2.0
ROLES = {"0": AGENT, "1": USER}
NON_PERSONA = ("B2", "B3", "B4", "B6", "B7")

log = logging.getLogger(__name__)


def split_of(dialogue_id: str) -> str:
  """"train" / "valid" / "test" from a stable hash of the id (80/10/10)."""
  h = int(hashlib.sha1(dialogue_id.encode("utf-8")).hexdigest()[:8], 16) % 100
  if h < SPLIT_FRACTIONS[0]:
    return "train"
  return "valid" if h < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else "test"


def p4g_dir(data_dir: str | os.PathLike) -> Path:
  d = Path(data_dir)
  return d / "p4g" if (d / "p4g").is_dir() else d


def _float(value: str, where: str, field: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise InputError(f"field {field!r} is not numeric: {value!r}", where) from None


def _require(row: dict, fields: tuple[str, ...], path: Path, line: int) -> None:
  for f in fields:
    if f not in row or row[f] is None:
      raise InputError(f"missing field {f!r}", f"{path}:{line}")


def _read_text(path: Path, skip_bad: bool = False) -> str:
  """The file as UTF-8 text; a bad byte is an InputError naming file:line (with skip_bad: replaced
  by U+FFFD, with a warning)."""
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    where = f"{path}:{_line_of(raw, e.start)}"
    if not skip_bad:
      raise InputError(f"not valid UTF-8 (byte {e.start})", where) from None
    log.warning("%s: not valid UTF-8 (byte %d); bad bytes replaced", where, e.start)
    return raw.decode("utf-8", errors="replace")


def _header(path: Path) -> list[str]:
  """The column names of a CSV file's first line (for the typed Features of `_rows`)."""
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    return next(csv.reader(f), [])


def _table(path: Path, skip_bad: bool, columns: list[str] | None = None) -> dict[str, list]:
  """The CSV's columns (`columns`: these, else every named one) as lists of strings, read with
  `datasets.load_dataset("csv")` into all-string Features (cells as written; empty cells ""; a
  short row's missing cells None). Invalid UTF-8: an InputError naming the line (skip_bad: the
  bytes replaced by U+FFFD, with a warning)."""
  names = [c for c in _header(path) if c and (columns is None or c in columns)]
  feats = datasets.Features({c: datasets.Value("string") for c in names})
  kw = dict(features=feats, usecols=names, keep_default_na=False)
  try:
    ds = hf_datasets.load_local("csv", [path], **kw)
  except Exception:  # pandas names no line: _read_text does (or warns with skip_bad)
    _read_text(path, skip_bad)
    if not skip_bad:
      raise
    ds = hf_datasets.load_local("csv", [path], encoding_errors="replace", **kw)
  return ds.to_dict()


def _rows(path: Path, skip_bad: bool, required: tuple[str, ...], errors: dict[str, list[InputError]],
          columns: list[str] | None = None):
  """(line, row, dialogue id B2, role) of each row of a P4G CSV whose `required` fields exist; a row
  with an unknown role B4 is appended to errors[dialogue id] instead."""
  table = _table(path, skip_bad, columns)
  names = list(table)
  n = len(table[names[0]]) if names else 0
  for i in range(n):
    line = i + 2
    row = {c: table[c][i] for c in names}
    _require(row, required, path, line)
    did = row["B2"].strip()
    role = ROLES.get(row["B4"].strip())
    if role is None:
      errors.setdefault(did, []).append(InputError(
          f"field 'B4' has unknown role {row['B4']!r}; expected 0 or 1", f"{path}:{line} (dialogue {did})"))
      continue
    yield line, row, did, role


def read_info(path: str | os.PathLike, skip_bad: bool = False
              ) -> tuple[dict[str, dict], dict[str, list[InputError]]]:
  """full_info.csv → ({dialogue id: {"user": row, "persuader": row, "user_where": ...}}, errors
  by id). Row-level problems are returned per dialogue id so the caller can skip or raise."""
  path = Path(path)
  info: dict[str, dict] = {}
  errors: dict[str, list[InputError]] = {}
  for line, row, did, role in _rows(path, skip_bad, ("B2", "B4", "B6"), errors):
    where = f"{path}:{line} (dialogue {did})"
    rec = info.setdefault(did, {})
    key = "user" if role == USER else "persuader"
    if key in rec:
      errors.setdefault(did, []).append(InputError(f"duplicate B4={row['B4']} row", where))
      continue
    rec[key] = row
    rec[key + "_where"] = where
  return info, errors


_CACHE: dict = {}  # the last parse: {key: (items, errors by id)}; three splits read the files once


def _stamp(p: Path) -> tuple:
  st = p.stat()
  return (str(p.resolve()), st.st_mtime_ns, st.st_size, st.st_ino)


def _parse(dpath: Path, ipath: Path, skip_bad: bool, merge: bool
           ) -> tuple[list[Dialogue], dict[str, InputError]]:
  key = (_stamp(dpath), _stamp(ipath), skip_bad, merge)
  if key in _CACHE:
    return _CACHE[key]
  info, errors = read_info(ipath, skip_bad)
  turns: dict[str, list[Turn]] = {}
  first_line: dict[str, int] = {}  # a dialogue's first row in the dialog file
  for line, row, did, role in _rows(dpath, skip_bad, ("Unit", "B4", "B2"), errors, ["Unit", "B4", "B2"]):
    first_line.setdefault(did, line)
    text = " ".join((row["Unit"] or "").split())
    if text:
      turns.setdefault(did, []).append(Turn(role, text))
  items: list[Dialogue] = []
  bad: dict[str, InputError] = {}
  for did in sorted(set(turns) | set(errors) | set(first_line)):
    try:
      if errors.get(did):
        raise errors[did][0]
      if did not in turns:  # rows, but every 'Unit' empty: an empty dialogue, not a silent drop
        raise InputError(f"dialogue {did} is empty (every 'Unit' of its rows is blank)",
                         f"{dpath}:{first_line[did]}")
      rec = info.get(did, {})
      if "user" not in rec:
        raise InputError(f"dialogue {did}: no persuadee row (B4 == 1)", str(ipath))
      items.append(_make(did, turns.get(did, []), rec, merge))
    except ValueError as e:
      if not skip_bad:
        raise
      bad[did] = e if isinstance(e, InputError) else InputError(str(e))
  if bad:
    first = next(iter(bad.values()))
    log.warning("%s: skipped %d bad dialogue(s); first: %s", dpath, len(bad), first)
  _CACHE.clear()
  _CACHE[key] = (items, bad)
  return items, bad


def _paths(data_dir, dialog_file: str, info_file: str) -> tuple[Path, Path]:
  d = p4g_dir(data_dir)
  dpath, ipath = d / dialog_file, d / info_file
  for p in (dpath, ipath):
    if not p.is_file():
      raise InputError("P4G file not found", str(p))
  return dpath, ipath


def load(data_dir: str | os.PathLike, *, skip_bad: bool = False, merge: bool = True,
         dialog_file: str = "full_dialog.csv", info_file: str = "full_info.csv"
         ) -> LoadedDialogues:
  """All P4G dialogues (sorted by id) from `{data_dir}/p4g/{dialog_file, info_file}`."""
  items, bad = _parse(*_paths(data_dir, dialog_file, info_file), skip_bad, merge)
  return LoadedDialogues(items, skipped=len(bad), errors=[str(bad[d]) for d in sorted(bad)])


def _make(did: str, turns: list[Turn], rec: dict, merge: bool) -> Dialogue:
  user, where = rec["user"], rec["user_where"]
  if not turns:
    raise InputError(f"dialogue {did} has no utterances in the dialog file", where)
  raw = _float(user["B6"], where, "B6")
  outcome: dict[str, Any] = {"donation_raw": raw, "donation": min(max(raw, 0.0), DONATION_CAP)}
  if (user.get("B7") or "").strip():
    outcome["num_turns"] = int(_float(user["B7"], where, "B7"))
  if "persuader" in rec and (rec["persuader"].get("B6") or "").strip():
    outcome["persuader_donation"] = _float(rec["persuader"]["B6"], rec["persuader_where"], "B6")
  condition = {}
  for k, v in user.items():
    if k in NON_PERSONA or k is None:
      continue
    v = (v or "").strip()
    if v and v.upper() != "NA":
      condition[k[:-2] if k.endswith(".x") else k] = v
  return Dialogue(id=did, task="p4g", turns=merge_consecutive(turns) if merge else turns,
                  condition=condition, outcome=outcome)


def load_split(data_dir: str | os.PathLike, split: str, *, skip_bad: bool = False, merge: bool = True,
               dialog_file: str = "full_dialog.csv", info_file: str = "full_info.csv") -> LoadedDialogues:
  """The dialogues whose `split_of(id)` is `split`; `.skipped` / `.errors` count only the bad
  dialogues of this split (the files are parsed once for all three splits)."""
  if split not in SPLITS:
    raise InputError(f"unknown P4G split {split!r}; expected one of {SPLITS}", str(data_dir))
  items, bad = _parse(*_paths(data_dir, dialog_file, info_file), skip_bad, merge)
  mine = sorted(d for d in bad if split_of(d) == split)
  return LoadedDialogues([x for x in items if split_of(x.id) == split], skipped=len(mine),
                         errors=[str(bad[d]) for d in mine])
