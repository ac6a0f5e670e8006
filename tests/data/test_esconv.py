from __future__ import annotations

import json

import pytest

from engage_jax.data import esconv

GOOD = {"emotion_type": "anxiety", "problem_type": "job crisis", "situation": "I may lose my job.",
        "survey_score": {"seeker": {"initial_emotion_intensity": "4",
                                    "final_emotion_intensity": "2"}},
        "dialog": [{"text": "Hello", "speaker": "usr"},
                   {"text": "Hi, how are you?", "speaker": "sys", "strategy": "Question"},
                   {"text": "Anxious.", "speaker": "usr"},
                   {"text": "about my job", "speaker": "usr"},
                   {"text": "I hear you.", "speaker": "sys", "strategy": "Reflection of feelings"},
                   {"text": "Thanks, I feel much better now.", "speaker": "usr"}]}


def _write(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return path


@pytest.mark.data
def test_real_splits(shared_data, monkeypatch):
  # the real files go through datasets (typed as HF_FEATURES), never the line-by-line fallback
  monkeypatch.setattr(esconv, "_load_jsonl_lines", lambda *a: pytest.fail("read by hand"))
  counts = {}
  for split in esconv.SPLITS:
    ds = esconv.load_split(shared_data, split)
    counts[split] = len(ds)
    assert ds.skipped == 0
    for d in ds:
      assert all(d.condition[k].strip() for k in esconv.CONDITION_KEYS), d.id
      assert d.turns and isinstance(d.outcome["engaged"], bool)
      assert all(t.strategy in esconv.STRATEGIES for t in d.turns if t.role == "agent")
    assert len({d.id for d in ds}) == len(ds)
  assert counts == {"train": 910, "valid": 195, "test": 195}
  assert sum("initial_emotion_intensity" in d.outcome for d in ds) == len(ds)


@pytest.mark.data
def test_raw_failed_layout(shared_data, monkeypatch):
  monkeypatch.setattr(esconv, "_read_raw_json", lambda *a: pytest.fail("read by hand"))
  ds = esconv.load_file(shared_data / "esconv" / "FailedESConv.json")
  assert len(ds) == 196
  assert all(t.strategy in esconv.STRATEGIES + (None,) for d in ds for t in d.turns
             if t.role == "agent")
  assert sum(len(d.outcome.get("feedback", [])) for d in ds) == 987


def test_small_file(tmp_path):
  (d,) = esconv.load_jsonl(_write(tmp_path / "train.txt", [GOOD]))
  assert d.id == "esconv-train-0" and d.task == "es"
  assert [t.role for t in d.turns] == ["user", "agent", "user", "agent", "user"]
  assert d.turns[2].text == "Anxious. about my job"
  assert d.outcome == {"engaged": True, "initial_emotion_intensity": 4, "final_emotion_intensity": 2}
  (u,) = esconv.load_jsonl(tmp_path / "train.txt", merge=False)
  assert len(u.turns) == 6


def test_raw_layout(tmp_path):
  raw = dict(GOOD, dialog=[
      {"speaker": "seeker", "annotation": {}, "content": "hi\n"},
      {"speaker": "supporter", "annotation": {"strategy": "Questions"}, "content": "why?"},
      {"speaker": "seeker", "annotation": {"feedback": "4"}, "content": "that really helps"}])
  p = tmp_path / "ESConv.json"
  p.write_text(json.dumps([raw]))
  (d,) = esconv.load_file(p)
  assert d.turns[1].strategy == "Question" and d.outcome["engaged"]
  assert d.outcome["feedback"] == [[2, 4]]


@pytest.mark.parametrize("bad,needle", [
    ("{not json", "malformed JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "situation"}), "'situation'"),
    (json.dumps(dict(GOOD, dialog=[{"speaker": "bot", "text": "x"}])), "'speaker'"),
    (json.dumps(dict(GOOD, dialog=[{"speaker": "usr"}])), "'text'"),
    (json.dumps(dict(GOOD, survey_score={"seeker": {"initial_emotion_intensity": "high"}})),
     "initial_emotion_intensity"),
])
def test_bad_input(tmp_path, bad, needle):
  p = _write(tmp_path / "valid.txt", [GOOD, bad, GOOD])
  with pytest.raises(ValueError, match=needle) as e:
    esconv.load_jsonl(p)
  assert f"{p}:2" in str(e.value)
  ds = esconv.load_jsonl(p, skip_bad=True)
  assert len(ds) == 2 and ds.skipped == 1 and needle.strip("'") in ds.errors[0]
  assert [d.id for d in ds] == ["esconv-valid-0", "esconv-valid-2"]


def test_unknown_speaker_names_value(tmp_path):
  p = _write(tmp_path / "x.txt", [dict(GOOD, dialog=[{"speaker": "robot", "text": "x"}])])
  with pytest.raises(ValueError, match="robot"):
    esconv.load_file(p)


def test_missing_split(tmp_path):
  with pytest.raises(ValueError, match="test.txt"):
    esconv.load_split(tmp_path, "test")
  with pytest.raises(ValueError, match="split"):
    esconv.load_split(tmp_path, "dev")
