from __future__ import annotations

import numpy as np
import pytest

from engage_jax.data import END_MARKER, Dialogue, Turn, outcome_line, sandbox, sft


def _targets(tok, ex):
  """[(ids, text)] of each masked-in span of an example, in order."""
  out, t, m = [], 0, ex.loss_mask
  while t < len(m):
    if m[t]:
      s = t
      while t < len(m) and m[t]:
        t += 1
      out.append((ex.input_ids[s:t], tok.decode(ex.input_ids[s:t])))
    t += 1
  return out


@pytest.mark.parametrize("task", ["es", "p4g"])
@pytest.mark.parametrize("max_len", [64, 256])
def test_agent_masks(sandbox_tok, task, max_len):
  tok = sandbox_tok
  ds = sandbox.generate(task, 20, 1)
  exs = sft.agent_examples(ds, tok, max_len)
  want = [t.text for d in ds for t in d.turns if t.role == "agent"]
  spans = [span for ex in exs for span in _targets(tok, ex)]
  assert [text for _, text in spans] == want  # every agent turn once, in order
  assert all(ids[-1] == tok.end_of_turn_id and ids.count(tok.end_of_turn_id) == 1 for ids, _ in spans)
  assistant = tok.hf.convert_tokens_to_ids("<|assistant|>")
  for ex in exs:  # each span follows an assistant header; the window ends on its last target
    assert all(ex.input_ids[s - 1] == assistant for s in range(1, len(ex.loss_mask))
               if ex.loss_mask[s] and not ex.loss_mask[s - 1])
    assert ex.loss_mask[-1] == 1 and len(ex.input_ids) <= max_len
  if max_len == 256:
    assert len(exs) == len(ds) < len(want)  # sandbox chats fit: one example per dialogue
  else:
    assert len(exs) > len(ds)


@pytest.mark.parametrize("task", ["es", "p4g"])
def test_simulator_masks(sandbox_tok, task):
  tok = sandbox_tok
  ds = sandbox.generate(task, 20, 2)
  exs = sft.simulator_examples(ds, tok, 256)
  want = []
  for d in ds:
    users = [t.text for t in d.turns if t.role == "user"]
    want += users[:-1] + [f"{users[-1]} {END_MARKER}"]
    if task == "p4g":
      want.append(outcome_line(d.outcome["donation"]))
  assert [text for e in exs for _, text in _targets(tok, e)] == want
  assert all(ids[-1] == tok.end_of_turn_id for e in exs for ids, _ in _targets(tok, e))
  if task == "p4g":  # the outcome line closes the simulator's chat, the condition in its prompt
    assert len(exs) == len(ds)
    assert all(_targets(tok, e)[-1][1] == outcome_line(d.outcome["donation"]) for e, d in zip(exs, ds))
    assert "motivation:" in tok.decode(exs[0].input_ids)


def test_simulator_drops_trailing_agent_turns(sandbox_tok):
  d = Dialogue("x", "es", [Turn("user", "hi"), Turn("agent", "hello"), Turn("user", "bye"),
                           Turn("agent", "take care")], {"emotion_type": "sadness"})
  exs = sft.simulator_examples([d], sandbox_tok, 128)
  assert [text for e in exs for _, text in _targets(sandbox_tok, e)] == ["hi", f"bye {END_MARKER}"]
  assert "take care" not in sandbox_tok.decode(exs[-1].input_ids)


def test_left_truncation(sandbox_tok):
  tok = sandbox_tok
  (d,) = [x for x in sandbox.generate("p4g", 5, 3)][:1]
  (full,) = sft.agent_examples([d], tok, 1024)
  max_len = len(full.input_ids) - 12
  stats = {}
  cut = sft.agent_examples([d], tok, max_len, stats=stats)
  assert len(cut) == stats["windows"] == 2 and stats.get("truncated", 0) >= 1
  assert all(len(e.input_ids) <= max_len for e in cut)
  assert _targets(tok, full) == [t for e in cut for t in _targets(tok, e)]  # the targets stay intact
  for e in cut:
    assert tok.decode(e.input_ids).startswith("You are a persuader.")  # the system message is kept
  # A target longer than the budget: its own example, no history, its tail cut.
  long = Dialogue("y", "es", [Turn("user", "hi"), Turn("agent", "so you are saying " * 40),
                              Turn("user", "ok"), Turn("agent", "good")], {})
  stats = {}
  ex, last = sft.agent_examples([long], tok, 48, stats=stats)
  assert len(ex.input_ids) == 48 and stats["target_cut"] == 1 and sum(ex.loss_mask) > 10
  assert "hi" not in tok.decode(ex.input_ids) and _targets(tok, last)[0][1] == "good"


def test_buckets_and_iterator(sandbox_tok):
  tok = sandbox_tok
  ds = sandbox.generate("es", 30, 4)
  arrays, stats = sft.build_arrays(ds, tok, "agent", 128)
  assert set(arrays) <= set(sft.default_buckets(128)) == {32, 64, 128}
  n = sum(len(a["input_ids"]) for a in arrays.values())
  assert n == stats["examples"]
  for b, a in arrays.items():
    assert all(a[k].shape == (len(a["input_ids"]), b) for k in sft.ARRAY_KEYS)
    assert (a["input_ids"][a["attention_mask"] == 0] == tok.pad_id).all()
    assert not (a["loss_mask"] & (1 - a["attention_mask"])).any()
  assert sum(int(a["loss_mask"].sum()) for a in arrays.values()) == stats["target_tokens"]

  it = sft.BatchIterator(arrays, 8, seed=0, num_epochs=2)
  batches = list(it)
  assert len(batches) == 2 * it.steps_per_epoch and it.state() == {"epoch": 2, "step": 0}
  assert all(b["input_ids"].shape[0] == 8 for b in batches)
  first = batches[:it.steps_per_epoch]
  assert sum(int(b["loss_mask"].sum()) for b in first) == stats["target_tokens"]  # no loss, no dup

  # resume mid-epoch gives the same stream
  it2 = sft.BatchIterator(arrays, 8, seed=0, num_epochs=2)
  stream = iter(it2)
  for _ in range(3):
    next(stream)
  state = it2.state()
  rest = list(sft.BatchIterator(arrays, 8, seed=0, num_epochs=2, **state))
  assert len(rest) == len(batches) - 3
  for a, b in zip(rest, batches[3:]):
    assert all(np.array_equal(a[k], b[k]) for k in sft.ARRAY_KEYS)
  # another seed → another order
  other = list(sft.BatchIterator(arrays, 8, seed=1, num_epochs=1))
  assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(other, first))


def test_next_token_arrays():
  ids = np.arange(12).reshape(2, 6)
  mask = np.array([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
  x, y, w = sft.next_token_arrays(ids, mask)
  assert x.shape == y.shape == w.shape == (2, 5)
  assert (y[0][w[0] == 1] == [2, 3]).all()


@pytest.mark.data
def test_real_data_examples(shared_data, sandbox_tok):
  from engage_jax.data import esconv, p4g
  tok = sandbox_tok
  es = esconv.load_split(shared_data, "valid")[:3]
  for ex in sft.agent_examples(es, tok, 256):
    assert len(ex.input_ids) <= 256 and sum(ex.loss_mask) > 0
  pg = p4g.load_split(shared_data, "valid")[:3]
  stats = {}
  exs = sft.simulator_examples(pg, tok, 1024, stats=stats)
  assert stats.get("dropped", 0) == 0
  last = {e.dialogue_id: e for e in exs}  # each dialogue's last window ends on its outcome line
  assert [_targets(tok, last[d.id])[-1][1] for d in pg] == [outcome_line(d.outcome["donation"]) for d in pg]


def test_examples_come_from_a_fingerprinted_map_cache(sandbox_tok, tmp_path, monkeypatch):
  """build_arrays = pad_to_buckets(the windows) through datasets' .map; a rerun reads the cached
  Arrow file (no tokenizer call); another max_len or other dialogues are tokenized anew."""
  ds = sandbox.generate("p4g", 12, 1)
  want = sft.pad_to_buckets(sft.simulator_examples(ds, sandbox_tok, 96), sandbox_tok.pad_id, 96)
  got, stats = sft.build_arrays(ds, sandbox_tok, "simulator", 96, cache_dir=str(tmp_path))
  assert len(list(tmp_path.glob("sft-*.arrow"))) == 1 and stats["examples"] == sum(len(v["input_ids"]) for v in got.values())

  def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k][n], b[k][n]) for k in a for n in a[k])
  assert same(got, want)
  monkeypatch.setattr(sft, "examples_from_messages", lambda *a, **k: pytest.fail("tokenized again"))
  again, stats2 = sft.build_arrays(ds, sandbox_tok, "simulator", 96, cache_dir=str(tmp_path))
  assert same(again, want) and stats2 == stats
  with pytest.raises(pytest.fail.Exception, match="tokenized again"):
    sft.build_arrays(ds, sandbox_tok, "simulator", 80, cache_dir=str(tmp_path))
  with pytest.raises(pytest.fail.Exception, match="tokenized again"):
    sft.build_arrays(ds[:-1], sandbox_tok, "simulator", 96, cache_dir=str(tmp_path))
