"""ESConv loader (Liu et al., ACL 2021).

Two layouts are read into `Dialogue` records (task "es", agent = supporter, user = seeker):
- the HF release (`thu-coai/esconv`, files `esconv/{train,valid,test}.txt`): JSON lines, one
  conversation per line, `dialog` items `{"text", "speaker": "usr"|"sys", "strategy"?}`;
- the raw `ESConv.json` / `FailedESConv.json` layout: one JSON array, `dialog` items
  `{"content", "speaker": "seeker"|"supporter" (or "speaker"|"listener"), "annotation":
  {"strategy"?, "feedback"?}}`.

condition = {emotion_type, problem_type, situation}; outcome = {engaged (rewards.es_engaged over
the seeker's last turns), initial_emotion_intensity?, final_emotion_intensity? (ints 1..5),
feedback? (list of [utterance index in
`dialog`, score 1..5], raw layout only)}. Consecutive same-speaker utterances are merged into one
turn by default (the merged turn keeps its first strategy). Files are read with
`datasets.load_dataset("json")` and checked against the typed `HF_FEATURES` / `RAW_FEATURES`
(absent fields read as null; a null condition field is "missing"). Bad records raise a ValueError naming
the file, line / record index and field; `skip_bad=True` drops them instead and the returned
`LoadedDialogues` tells how many (`.skipped`, `.errors`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from engage_jax import rewards
from engage_jax.data import hf_datasets
from engage_jax.data.dialogue import AGENT, USER, Dialogue, LoadedDialogues, Turn, merge_consecutive
from engage_jax.errors import InputError
from engage_jax.fileio import line_of as _line_of

SPLITS = ("train", "valid", "test")
CONDITION_KEYS = ("emotion_type", "problem_type", "situation")
SPEAKERS = {"usr": USER, "seeker": USER, "speaker": USER,
            "sys": AGENT, "supporter": AGENT, "listener": AGENT}
# Older label set of the raw / failed files -> the 8 names of strategy.json.
# ("Direct Guidance" is the draft-era name of "Providing Suggestions".)
STRATEGY_ALIASES = {"Questions": "Question", "Other": "Others",
                    "Approval and Reassurance": "Affirmation and Reassurance",
                    "Restatement": "Restatement or Paraphrasing",
                    "Direct Guidance": "Providing Suggestions"}
STRATEGIES = ("Question", "Restatement or Paraphrasing", "Reflection of feelings",
              "Self-disclosure", "Affirmation and Reassurance", "Providing Suggestions",
              "Information", "Others")

_S = datasets.Value("string")
_SURVEY = {"seeker": {"initial_emotion_intensity": _S, "final_emotion_intensity": _S, "empathy": _S,
                      "relevance": _S},
           "supporter": {"relevance": _S}}
_HEAD = {"experience_type": _S, "emotion_type": _S, "problem_type": _S, "situation": _S, "survey_score": _SURVEY}
# the HF release's columns (JSON lines)
HF_FEATURES = datasets.Features({
    **_HEAD, "dialog": datasets.List({"text": _S, "speaker": _S, "strategy": _S}),
    "seeker_question1": _S, "seeker_question2": _S, "supporter_question1": _S, "supporter_question2": _S})
# the raw ESConv.json / FailedESConv.json columns (one JSON array)
RAW_FEATURES = datasets.Features({
    **_HEAD, "dialog": datasets.List({"speaker": _S, "content": _S, "annotation": {"strategy": _S, "feedback": _S}})})

log = logging.getLogger(__name__)


def _intensity(value: Any, where: str, field: str) -> int:
  try:
    return int(float(value))
  except (TypeError, ValueError):
    raise InputError(f"field {field!r} is not numeric: {value!r}", where) from None


def record_to_dialogue(rec: Any, dialogue_id: str, where: str, *, merge: bool = True,
                       es_pattern: str = rewards.DEFAULT_ES_PATTERN, es_last_n: int = rewards.DEFAULT_ES_LAST_N
                       ) -> Dialogue:
  """One ESConv record (HF or raw layout) → Dialogue. `where` prefixes error messages."""
  if not isinstance(rec, dict):
    raise InputError("record is not a JSON object", where)
  condition = {}
  for key in CONDITION_KEYS:
    if rec.get(key) is None:  # a typed row holds every column: an absent key reads as null
      raise InputError(f"missing field {key!r}", where)
    if rec[key] is not None and not isinstance(rec[key], str):
      raise InputError(f"field {key!r} must be a string; got {type(rec[key]).__name__} {rec[key]!r:.60}", where)
    condition[key] = rec[key].strip()
  dialog = rec.get("dialog")
  if not isinstance(dialog, list):
    raise InputError("missing field 'dialog' (a list of utterances)", where)
  turns: list[Turn] = []
  feedback: list[list[int]] = []
  for j, utt in enumerate(dialog):
    uwhere = f"{where}, utterance {j}"
    if not isinstance(utt, dict):
      raise InputError("utterance is not a JSON object", uwhere)
    if "speaker" not in utt:
      raise InputError("missing field 'speaker'", uwhere)
    role = SPEAKERS.get(utt["speaker"])
    if role is None:
      raise InputError(f"field 'speaker' has unknown value {utt['speaker']!r}; "
                       f"expected one of {sorted(SPEAKERS)}", uwhere)
    text = utt.get("text", utt.get("content"))
    if not isinstance(text, str):
      raise InputError("missing field 'text' (or 'content')", uwhere)
    ann = utt.get("annotation") or {}
    strategy = utt.get("strategy", ann.get("strategy") if isinstance(ann, dict) else None)
    if role == AGENT and strategy is not None:
      strategy = STRATEGY_ALIASES.get(strategy, strategy) if isinstance(strategy, str) else strategy
      if strategy not in STRATEGIES:
        raise InputError(f"field 'strategy' has unknown value {strategy!r:.60}; expected one of "
                         f"{', '.join(STRATEGIES)}", uwhere)
    else:
      strategy = None
    text = " ".join(text.split())
    if not text:
      continue
    if isinstance(ann, dict) and ann.get("feedback") not in (None, ""):
      feedback.append([j, _intensity(ann["feedback"], uwhere, "annotation.feedback")])
    turns.append(Turn(role, text, strategy))
  if not turns:
    raise InputError("the dialogue is empty (no utterance with text in field 'dialog')", where)
  if merge:
    turns = merge_consecutive(turns)
  user_texts = [t.text for t in turns if t.role == USER]
  outcome: dict[str, Any] = {
      "engaged": rewards.es_engaged(user_texts, es_pattern, es_last_n) if user_texts else False}
  seeker = ((rec.get("survey_score") or {}).get("seeker") or {})
  for key in ("initial_emotion_intensity", "final_emotion_intensity"):
    if seeker.get(key) not in (None, ""):
      outcome[key] = _intensity(seeker[key], where, f"survey_score.seeker.{key}")
  if feedback:
    outcome["feedback"] = feedback
  return Dialogue(id=dialogue_id, task="es", turns=turns, condition=condition, outcome=outcome)


def _decode(raw: bytes, where: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"not valid UTF-8 (byte {e.start} of the line)", where) from None


def _finish(items: list[Dialogue], errors: list[str], path: Path) -> LoadedDialogues:
  if errors:
    log.warning("%s: skipped %d bad record(s); first: %s", path, len(errors), errors[0])
  return LoadedDialogues(items, skipped=len(errors), errors=errors)


def load_jsonl(path: str | os.PathLike, *, skip_bad: bool = False, id_prefix: str | None = None,
               merge: bool = True, cache_dir: str | None = None) -> LoadedDialogues:
  """HF-release JSON lines → dialogues with ids "{id_prefix}-{line_index}" (prefix: file stem).
  Read with `datasets.load_dataset("json")` (cached under `cache_dir`, engage_jax/data/hf_datasets.py)
  and checked against the typed HF_FEATURES (`hf_datasets.conforms`); a file it rejects or whose
  types differ (bad JSON or UTF-8, a number where a string belongs) is read line by line instead,
  to name the bad line (or, with skip_bad, to keep the other lines)."""
  path = Path(path)
  prefix = id_prefix if id_prefix is not None else f"esconv-{path.stem}"
  lines = hf_datasets.nonblank_lines(path)
  if not lines:
    return _finish([], [], path)
  try:
    ds = hf_datasets.load_local("json", [path], cache=cache_dir, on_mixed_types=None)
  except Exception:  # datasets names no line: find it below
    ds = None
  if ds is None or len(ds) != len(lines) or not hf_datasets.conforms(ds.features, HF_FEATURES):
    return _load_jsonl_lines(path, prefix, skip_bad, merge)
  return _dialogues(((rec, f"{prefix}-{lines[i] - 1}", f"{path}:{lines[i]}") for i, rec in enumerate(ds)),
                    path, skip_bad, merge)


def _dialogues(rows, path: Path, skip_bad: bool, merge: bool) -> LoadedDialogues:
  """`record_to_dialogue` over (record, dialogue id, where) rows; a bad record raises, or with
  `skip_bad` is counted and reported by `_finish`."""
  items, errors = [], []
  for rec, did, where in rows:
    try:
      items.append(record_to_dialogue(rec, did, where, merge=merge))
    except ValueError as e:
      if not skip_bad:
        raise
      errors.append(str(e))
  return _finish(items, errors, path)


def _load_jsonl_lines(path: Path, prefix: str, skip_bad: bool, merge: bool) -> LoadedDialogues:
  """The file line by line: only for a file `datasets` rejected or typed otherwise (it names
  neither the line nor the field)."""
  items, errors = [], []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        line = _decode(raw, where)
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise InputError(f"malformed JSON ({e.msg}, column {e.colno})", where) from None
        items.append(record_to_dialogue(rec, f"{prefix}-{lineno - 1}", where, merge=merge))
      except ValueError as e:
        if not skip_bad:
          raise
        errors.append(str(e))
  return _finish(items, errors, path)


def load_raw_json(path: str | os.PathLike, *, skip_bad: bool = False,
                  id_prefix: str | None = None, merge: bool = True, cache_dir: str | None = None
                  ) -> LoadedDialogues:
  """Raw ESConv.json / FailedESConv.json (one JSON array) → dialogues "{prefix}-{index}", read with
  `datasets.load_dataset("json")` and checked against RAW_FEATURES; a file it rejects, or whose
  types differ, is read with `json` to name the problem."""
  path = Path(path)
  prefix = id_prefix if id_prefix is not None else f"esconv-{path.stem}"
  try:
    data = hf_datasets.load_local("json", [path], cache=cache_dir, on_mixed_types=None)
  except Exception:  # datasets names no record: find it below
    data = None
  if data is None or not hf_datasets.conforms(data.features, RAW_FEATURES):
    data = _read_raw_json(path)
  return _dialogues(((rec, f"{prefix}-{i}", f"{path}: record {i}") for i, rec in enumerate(data)),
                    path, skip_bad, merge)


def _read_raw_json(path: Path) -> list:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"not valid UTF-8 (byte {e.start})", f"{path}:{_line_of(raw, e.start)}") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"malformed JSON ({e.msg})", f"{path}:{e.lineno}") from None
  if not isinstance(data, list):
    raise InputError("expected a JSON array of conversations", str(path))
  return data


def load_file(path: str | os.PathLike, **kw) -> LoadedDialogues:
  """Either layout, detected by the first non-space character ('[' → raw JSON array)."""
  path = Path(path)
  with open(path, "rb") as f:
    head = f.read(4096).lstrip()
  return load_raw_json(path, **kw) if head.startswith(b"[") else load_jsonl(path, **kw)


def esconv_dir(data_dir: str | os.PathLike) -> Path:
  """`data_dir/esconv` if it exists, else `data_dir`."""
  d = Path(data_dir)
  return d / "esconv" if (d / "esconv").is_dir() else d


def load_split(data_dir: str | os.PathLike, split: str, **kw) -> LoadedDialogues:
  """`{data_dir}/esconv/{split}.txt` (HF layout); ids "esconv-{split}-{i}"."""
  if split not in SPLITS:
    raise InputError(f"unknown ESConv split {split!r}; expected one of {SPLITS}", str(data_dir))
  path = esconv_dir(data_dir) / f"{split}.txt"
  if not path.is_file():
    raise InputError("ESConv split file not found", str(path))
  return load_jsonl(path, **kw)
