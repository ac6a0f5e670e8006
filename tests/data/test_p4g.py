from __future__ import annotations

import pytest

from engage_jax.data import p4g

DIALOG = ",Unit,Turn,B4,B2\n0,Hi! Donate?,0,0,d1\n1,Maybe.,0,1,d1\n2,Please.,1,0,d1\n" \
         "3,OK I give $1,1,1,d1\n0,Hello,0,0,d2\n1,No.,0,1,d2\n"
INFO_HEAD = "B2,B3,B4,B6,B7,extrovert.x,sex.x\n"


def _write(tmp_path, info_rows, dialog=DIALOG):
  (tmp_path / "full_dialog.csv").write_text(dialog)
  (tmp_path / "full_info.csv").write_text(INFO_HEAD + "".join(r + "\n" for r in info_rows))
  return tmp_path


GOOD_INFO = ["d1,u1,0,0.5,2,3.2,Male", "d1,u2,1,5.0,2,4.0,Female",
             "d2,u3,0,0,1,1.0,Male", "d2,u4,1,0,1,,"]


@pytest.mark.data
def test_real_corpus(shared_data):
  ds = p4g.load(shared_data)
  assert len(ds) == 1017 and ds.skipped == 0
  assert all("donation" in d.outcome and "donation_raw" in d.outcome for d in ds)
  assert sum(d.outcome["donation_raw"] > 0 for d in ds) == 545
  assert sum(d.outcome["donation_raw"] > 2 for d in ds) == 35
  assert all(0.0 <= d.outcome["donation"] <= 2.0 for d in ds)
  assert all(d.turns[0].role == "agent" for d in ds)
  assert sum(len(d.turns) for d in ds) == 20932
  assert sum(bool(d.condition.get("agreeable")) for d in ds) == 1012
  assert sum(bool(d.condition.get("sex")) for d in ds) == 1009
  splits = {s: p4g.load_split(shared_data, s) for s in p4g.SPLITS}
  assert sum(map(len, splits.values())) == 1017
  assert 700 < len(splits["train"]) < 900 and len(splits["valid"]) > 60 and len(splits["test"]) > 60
  assert not {d.id for d in splits["train"]} & {d.id for d in splits["test"]}


def test_small(tmp_path):
  ds = p4g.load(_write(tmp_path, GOOD_INFO))
  d1, d2 = ds
  assert d1.id == "d1" and [t.role for t in d1.turns] == ["agent", "user", "agent", "user"]
  assert d1.outcome == {"donation_raw": 5.0, "donation": 2.0, "num_turns": 2,
                        "persuader_donation": 0.5}
  assert d1.condition == {"extrovert": "4.0", "sex": "Female"}
  assert d2.condition == {} and d2.outcome["donation"] == 0.0


# Ids whose sha1 (first 8 hex digits) mod 100 is on each side of the 80/10/10 boundaries (79, 80,
# 89, 90), and real corpus ids: pinned, so a split that changed between processes (Python's salted
# hash()), versions or boundaries (< vs <=) would move a dialogue between train and test.
PINNED_SPLITS = {"id168": "train", "id26": "valid", "id139": "valid", "id41": "test",
                 "20180904-045349_715_live": "train", "20180719-202443_897_live": "test",
                 "20180825-080131_220_live": "train", "id2": "test", "id10": "test"}


def test_split_is_the_pinned_stable_hash():
  assert {i: p4g.split_of(i) for i in PINNED_SPLITS} == PINNED_SPLITS
  got = [p4g.split_of(f"id{i}") for i in range(2000)]
  assert 0.75 < got.count("train") / 2000 < 0.85


@pytest.mark.parametrize("rows,needle", [
    (GOOD_INFO[:1] + ["d1,u2,1,lots,2,4.0,F"] + GOOD_INFO[2:], "'B6'"),
    (GOOD_INFO[:1] + ["d1,u2,7,1,2,4.0,F"] + GOOD_INFO[2:], "'B4'"),
    (GOOD_INFO[:1] + GOOD_INFO[2:], "no persuadee row"),
])
def test_bad_info(tmp_path, rows, needle):
  _write(tmp_path, rows)
  with pytest.raises(ValueError, match=needle) as e:
    p4g.load(tmp_path)
  assert "d1" in str(e.value) and "full_info.csv" in str(e.value)
  ds = p4g.load(tmp_path, skip_bad=True)
  assert [d.id for d in ds] == ["d2"] and ds.skipped == 1


def test_bad_dialog_role(tmp_path):
  _write(tmp_path, GOOD_INFO, DIALOG.replace("2,Please.,1,0,d1", "2,Please.,1,9,d1"))
  with pytest.raises(ValueError, match=r"full_dialog.csv:4 \(dialogue d1\).*'B4'"):
    p4g.load(tmp_path)


def test_missing_column(tmp_path):
  (tmp_path / "full_dialog.csv").write_text(DIALOG)
  (tmp_path / "full_info.csv").write_text("B2,B3,B4\nd1,u1,0\n")
  with pytest.raises(ValueError, match=r"full_info.csv:2: missing field 'B6'"):
    p4g.load(tmp_path)


def test_missing_files(tmp_path):
  with pytest.raises(ValueError, match="full_dialog.csv"):
    p4g.load(tmp_path)
