"""PersuasionForGood loader (Wang et al., ACL 2019): `full_dialog.csv` + `full_info.csv`.

Each of the 1,017 dialogues becomes a `Dialogue` (task "p4g", id = `B2`): `B4 == 0` rows
(persuader) are agent turns, `B4 == 1` rows (persuadee) user turns, in file order (consecutive
same-role rows merged). condition = the persuadee's persona columns of `full_info.csv` (Big-Five,
moral foundations, Schwartz values, decision style, demographics; the ".x" suffix dropped; values
kept as the CSV strings; empty cells omitted). outcome = {donation_raw: `B6` of the persuadee row,
donation: clipped to [0, 2], num_turns: `B7`, persuader_donation: `B6` of the persuader row}.

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

from engage_jax.data.dialogue import AGENT, USER, Dialogue, LoadedDialogues, Turn, merge_consecutive

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
    raise ValueError(f"{where}: field {field!r} is not numeric: {value!r}") from None


def _require(row: dict, fields: tuple[str, ...], path: Path, line: int) -> None:
  for f in fields:
    if f not in row or row[f] is None:
      raise ValueError(f"{path}:{line}: missing field {f!r}")


def read_info(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, list[str]]]:
  """full_info.csv → ({dialogue id: {"user": row, "persuader": row, "user_line": n}}, errors by
  id). Row-level problems are returned per dialogue id so the caller can skip or raise."""
  path = Path(path)
  info: dict[str, dict] = {}
  errors: dict[str, list[str]] = {}
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    for line, row in enumerate(reader, start=2):
      _require(row, ("B2", "B4", "B6"), path, line)
      did = row["B2"].strip()
      role = ROLES.get(row["B4"].strip())
      where = f"{path}:{line} (dialogue {did})"
      if role is None:
        errors.setdefault(did, []).append(
            f"{where}: field 'B4' has unknown role {row['B4']!r}; expected 0 or 1")
        continue
      rec = info.setdefault(did, {})
      key = "user" if role == USER else "persuader"
      if key in rec:
        errors.setdefault(did, []).append(f"{where}: duplicate B4={row['B4']} row")
        continue
      rec[key] = row
      rec[key + "_where"] = where
  return info, errors


def load(data_dir: str | os.PathLike, *, skip_bad: bool = False, merge: bool = True,
         dialog_file: str = "full_dialog.csv", info_file: str = "full_info.csv"
         ) -> LoadedDialogues:
  """All P4G dialogues (sorted by id) from `{data_dir}/p4g/{dialog_file, info_file}`."""
  d = p4g_dir(data_dir)
  dpath, ipath = d / dialog_file, d / info_file
  for p in (dpath, ipath):
    if not p.is_file():
      raise ValueError(f"P4G file {str(p)!r} not found")
  info, errors = read_info(ipath)
  turns: dict[str, list[Turn]] = {}
  with open(dpath, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    for line, row in enumerate(reader, start=2):
      _require(row, ("Unit", "B4", "B2"), dpath, line)
      did = row["B2"].strip()
      role = ROLES.get(row["B4"].strip())
      if role is None:
        errors.setdefault(did, []).append(
            f"{dpath}:{line} (dialogue {did}): field 'B4' has unknown role {row['B4']!r}; "
            "expected 0 or 1")
        continue
      text = " ".join((row["Unit"] or "").split())
      if text:
        turns.setdefault(did, []).append(Turn(role, text))
  items: list[Dialogue] = []
  for did in sorted(set(turns) | set(errors)):
    try:
      if errors.get(did):
        raise ValueError(errors[did][0])
      rec = info.get(did, {})
      if "user" not in rec:
        raise ValueError(f"{ipath}: dialogue {did}: no persuadee row (B4 == 1)")
      items.append(_make(did, turns.get(did, []), rec, merge))
    except ValueError as e:
      if not skip_bad:
        raise
      errors.setdefault(did, [str(e)])
  bad = [e for did in sorted(errors) for e in errors[did][:1]]
  if bad:
    log.warning("%s: skipped %d bad dialogue(s); first: %s", dpath, len(bad), bad[0])
  return LoadedDialogues(items, skipped=len(bad), errors=bad)


def _make(did: str, turns: list[Turn], rec: dict, merge: bool) -> Dialogue:
  user, where = rec["user"], rec["user_where"]
  if not turns:
    raise ValueError(f"{where}: dialogue {did} has no utterances in the dialog file")
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


def load_split(data_dir: str | os.PathLike, split: str, **kw) -> LoadedDialogues:
  """The dialogues whose `split_of(id)` is `split`."""
  if split not in SPLITS:
    raise ValueError(f"unknown P4G split {split!r}; expected one of {SPLITS}")
  everything = load(data_dir, **kw)
  return LoadedDialogues([x for x in everything if split_of(x.id) == split],
                         skipped=everything.skipped, errors=everything.errors)
