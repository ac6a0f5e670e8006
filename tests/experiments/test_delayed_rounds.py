"""The delayed-world rounds summary (engage_jax/experiments/delayed_rounds.py) on hand-made oracle
chats: per-unit means, share of the world's optimum, the paired test of future vs turn."""
from __future__ import annotations

import json

import pytest

from engage_jax.data import sandbox
from engage_jax.data.dialogue import Dialogue
from engage_jax.experiments import delayed_rounds


def _write(path, values):
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [Dialogue(f"c{i}/s{k}", "es", [], {}, outcome={"condition_id": f"c{i}", "expected": v[k], "reward": 0.0})
          for i, v in enumerate(values) for k in range(len(v))]
  path.write_text("".join(json.dumps(d.to_json()) + "\n" for d in rows))


def test_rounds_summary_on_known_values(tmp_path):
  # 4 conditions x 2 samples; future improves every condition by 0.5 in round 2, turn stays
  base = [(0.1, 0.1), (0.2, 0.0), (0.1, 0.3), (0.0, 0.2)]
  for h in ("future", "turn"):
    wd = tmp_path / f"es-s0-{h}"
    _write(wd / "oracle" / "sft.jsonl", base)
    _write(wd / "oracle" / "round-1.jsonl", base)
    _write(wd / "oracle" / "dpo.jsonl", [(a + 0.5, b + 0.5) for a, b in base] if h == "future" else base)
  s = delayed_rounds.summarize(tmp_path, "es", [0], rounds=2)
  opt = sandbox.world_table("es", "delayed")["optimum"]
  rows = {r["agent"]: r for r in s["by_round"]}
  assert list(rows) == ["sft", "round-1", "dpo"]
  assert rows["sft"]["future"]["mean"] == pytest.approx(0.125) and rows["sft"]["future"]["n_units"] == 4
  assert rows["dpo"]["future"]["mean"] == pytest.approx(0.625)
  assert rows["dpo"]["future"]["share_of_optimum"] == pytest.approx(0.625 / opt)
  assert rows["round-1"]["p_future_vs_turn"] == 1.0  # no differences
  # 4 equal positive differences: only the 2 all-same-sign patterns of 2^4 reach |mean| = 0.5
  assert rows["dpo"]["p_future_vs_turn"] == pytest.approx(2 / 16)
  assert rows["dpo"]["future"]["pairs"] == 0 and s["targets"]["future_beats_turn_p05"] is False
