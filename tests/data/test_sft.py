from __future__ import annotations

import numpy as np
import pytest

from engage_jax.data import END_MARKER, Dialogue, Turn, outcome_line, sandbox, sft


def _target(tok, ex):
  ids = [i for i, m in zip(ex.input_ids, ex.loss_mask) if m]
  return ids, tok.decode(ids)


@pytest.mark.parametrize("task", ["es", "p4g"])
def test_agent_masks(sandbox_tok, task):
  tok = sandbox_tok
  ds = sandbox.generate(task, 20, 1)
  exs = sft.agent_examples(ds, tok, 256)
  want = [t.text for d in ds for t in d.turns if t.role == "agent"]
  assert len(exs) == len(want)
  for ex, text in zip(exs, want):
    ids, decoded = _target(tok, ex)
    assert decoded == text and ids[-1] == tok.end_of_turn_id
    assert ids.count(tok.end_of_turn_id) == 1
    first = ex.loss_mask.index(1)  # the mask is one contiguous span at the end
    assert all(ex.loss_mask[first:]) and ex.input_ids[first - 1] == tok.hf.convert_tokens_to_ids(
        "<|assistant|>")


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
  assert [_target(tok, e)[1] for e in exs] == want
  assert all(_target(tok, e)[0][-1] == tok.end_of_turn_id for e in exs)
  if task == "p4g":
    outs = [e for e in exs if e.kind == "outcome"]
    assert len(outs) == len(ds)
    assert "motivation:" in tok.decode(outs[0].input_ids)  # the condition is in the prompt


def test_simulator_drops_trailing_agent_turns(sandbox_tok):
  d = Dialogue("x", "es", [Turn("user", "hi"), Turn("agent", "hello"), Turn("user", "bye"),
                           Turn("agent", "take care")], {"emotion_type": "sadness"})
  exs = sft.simulator_examples([d], sandbox_tok, 128)
  assert [_target(sandbox_tok, e)[1] for e in exs] == ["hi", f"bye {END_MARKER}"]
  assert "take care" not in sandbox_tok.decode(exs[-1].input_ids)


def test_left_truncation(sandbox_tok):
  tok = sandbox_tok
  (d,) = [x for x in sandbox.generate("p4g", 5, 3)][:1]
  full = sft.agent_examples([d], tok, 1024)
  longest = max(len(e.input_ids) for e in full)
  max_len = longest - 12
  stats = {}
  cut = sft.agent_examples([d], tok, max_len, stats=stats)
  assert stats.get("truncated", 0) >= 1 and all(len(e.input_ids) <= max_len for e in cut)
  for a, b in zip(full, cut):
    assert _target(tok, a) == _target(tok, b)  # the target stays intact
    prompt = tok.decode(b.input_ids)
    assert prompt.startswith("You are a persuader.")  # the system message is kept
  # A target longer than the budget is cut at its tail.
  long = Dialogue("y", "es", [Turn("user", "hi"), Turn("agent", "so you are saying " * 40)], {})
  stats = {}
  (ex,) = sft.agent_examples([long], tok, 48, stats=stats)
  assert len(ex.input_ids) == 48 and stats["target_cut"] == 1 and sum(ex.loss_mask) > 10


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
  outs = [e for e in sft.simulator_examples(pg, tok, 1024, stats=stats) if e.kind == "outcome"]
  assert stats.get("dropped", 0) == 0
  assert [_target(tok, e)[1] for e in outs] == [outcome_line(d.outcome["donation"]) for d in pg]


@pytest.mark.parametrize("role", ["agent", "simulator"])
def test_packed_examples_hold_every_target_once(sandbox_tok, role):
  tok = sandbox_tok
  ds = sandbox.generate("p4g", 12, 5)
  make = sft.agent_examples if role == "agent" else sft.simulator_examples
  single, packed = make(ds, tok, 256), make(ds, tok, 256, pack=True)
  by_dialogue = {}
  for ex in single:
    by_dialogue.setdefault((ex.dialogue_id, ex.kind), []).append(_target(tok, ex)[0])
  assert len(packed) == len(by_dialogue) < len(single)
  for ex in packed:
    ids, _ = _target(tok, ex)
    assert ids == [t for target in by_dialogue[(ex.dialogue_id, ex.kind)] for t in target]
    # every target keeps its exact single-example context: the packed sequence extends it
    for one in [e for e in single if (e.dialogue_id, e.kind) == (ex.dialogue_id, ex.kind)]:
      assert ex.input_ids[:len(one.input_ids)] == one.input_ids
  assert sum(len(e.input_ids) for e in packed) < 0.6 * sum(len(e.input_ids) for e in single)


def test_packing_falls_back_when_too_long(sandbox_tok):
  (d,) = sandbox.generate("p4g", 1, 3)
  packed = sft.agent_examples([d], sandbox_tok, 64, pack=True)
  assert packed == sft.agent_examples([d], sandbox_tok, 64)
