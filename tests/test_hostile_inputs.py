"""Hostile inputs a probe found (issue 26 part 5): each is one line, `error: <what> (<where>)`,
naming the file (and line) or key, before any work where it can be known up front.

Same style as tests/test_bad_inputs.py (whose `cli` fixture and `_config` helper these reuse).
"""
from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from engage_jax import errors, pipeline
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
  monkeypatch.setattr(pipeline, "load_tokenizer", lambda wd: None)
  monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model before the pairs check"))
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
