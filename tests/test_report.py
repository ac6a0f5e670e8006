"""report.json schema, build/validate/write, report.md and plots."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from engage_jax import report as rp
from engage_jax.data.dialogue import Dialogue, Turn

# Tolerances: report numbers are float64 means and exact p-values of small binary/integer data,
# compared exactly or with pytest.approx's relative 1e-6 (the CPU does not enter).


def _dialogues(rewards, turns=None, prefix="c"):
  turns = turns or [3] * len(rewards)
  return [Dialogue(id=f"{prefix}{i}/s0", task="es", turns=[Turn("user", "hi")], condition={},
                   outcome={"reward": float(r), "num_turns": t, "terminal": True, "condition_id": f"{prefix}{i}"})
          for i, (r, t) in enumerate(zip(rewards, turns))]


GOOD = {"task": "es",
        "sft": {"n": 128, "reward_mean": 0.64, "ci95": [0.56, 0.72], "mean_turns": 7.5},
        "dpo": {"n": 128, "reward_mean": 0.80, "ci95": [0.73, 0.87], "mean_turns": 6.9},
        "pairs": 812, "p_value": 0.003, "wall_seconds": {"sft": 10.0, "search": 20.5, "dpo": 3}}


def test_validate_good_and_extra():
  rp.validate_report(GOOD)
  rp.validate_report(dict(GOOD, extra={"anything": [1, 2]}))


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r.pop("pairs"), "'pairs'"),
    (lambda r: r.pop("wall_seconds"), "'wall_seconds'"),
    (lambda r: r["sft"].pop("ci95"), "'sft.ci95'"),
    (lambda r: r["dpo"].pop("n"), "'dpo.n'"),
    (lambda r: r.update(task="chess"), "'task'"),
    (lambda r: r.update(pairs=3.5), "'pairs'"),
    (lambda r: r.update(pairs=True), "'pairs'"),
    (lambda r: r.update(p_value=1.5), "'p_value'"),
    (lambda r: r.update(p_value="0.01"), "'p_value'"),
    (lambda r: r["sft"].update(n=1.0), "'sft.n'"),
    (lambda r: r["sft"].update(reward_mean=float("nan")), "'sft.reward_mean'"),
    (lambda r: r["dpo"].update(ci95=[0.1]), "'dpo.ci95'"),
    (lambda r: r["dpo"].update(ci95=[0.9, 0.1]), "'dpo.ci95'"),
    (lambda r: r["dpo"].update(mean_turns=None), "'dpo.mean_turns'"),
    (lambda r: r["dpo"].update(extra_key=1), "'dpo.extra_key'"),
    (lambda r: r.update(surprise=1), "'surprise'"),
    (lambda r: r["wall_seconds"].update(sft=-1.0), "'wall_seconds.sft'"),
    (lambda r: r.update(wall_seconds=[1.0]), "'wall_seconds'"),
    (lambda r: r.update(sft=[0.5]), "'sft'"),
])
def test_validate_bad_names_key(mutate, key):
  r = copy.deepcopy(GOOD)
  mutate(r)
  with pytest.raises(ValueError) as e:
    rp.validate_report(r)
  assert key in str(e.value)


def test_build_report_paired_and_fields():
  rng = np.random.default_rng(0)
  sft = _dialogues(rng.binomial(1, 0.4, 40))
  dpo = _dialogues(np.minimum(1, np.array([d.outcome["reward"] for d in sft]) + rng.binomial(1, 0.6, 40)))
  r = rp.build_report("es", sft, dpo, pairs_count=17, wall_seconds={"sft": 1.5, "dpo": 2})
  rp.validate_report(r)
  assert set(r) == set(rp.REPORT_KEYS) | {"extra"}
  assert r["pairs"] == 17 and r["wall_seconds"] == {"sft": 1.5, "dpo": 2.0}
  assert r["dpo"]["reward_mean"] > r["sft"]["reward_mean"] and r["p_value"] < 0.01
  assert r["extra"]["p_value_test"] == rp.P_VALUE_TEST and r["extra"]["n_paired_conditions"] == 40
  assert r["extra"]["p_value_one_sided"] <= r["p_value"]
  assert 0 <= r["extra"]["mcnemar_p"] < 0.01
  json.dumps(r)  # JSON-serialisable


def test_build_report_unpaired_fallback_and_bad_task():
  sft = _dialogues([0.5, 0.6, 0.4], prefix="a")
  dpo = _dialogues([0.5, 0.6, 0.4], prefix="b")
  for d in sft + dpo:
    d.task = "p4g"
  r = rp.build_report("p4g", sft, dpo, 0, {})
  assert "unpaired" in r["extra"]["p_value_test"] and r["p_value"] > 0.5
  with pytest.raises(ValueError, match="task"):
    rp.build_report("chess", sft, dpo, 0, {})


def test_write_report_files(tmp_path):
  sft = _dialogues([0, 1, 0, 1, 0], turns=[2, 3, 4, 3, 2])
  dpo = _dialogues([1, 1, 0, 1, 1], turns=[3, 3, 5, 4, 4])
  pairs = [{"meta": {"margin": 0.1 * i, "depth": i % 3, "tree_id": i % 2, "chosen_value": 1.0,
                     "rejected_value": 0.5}} for i in range(1, 12)]
  stats = rp.search_stats_from_pairs(pairs)
  assert stats["pairs"] == 11 and stats["trees"] == 2 and len(stats["depths"]) == 11
  r = rp.build_report("es", sft, dpo, 11, {"sft": 1.0, "search": 2.0, "dpo": 3.0}, search_stats=stats)
  assert r["extra"]["search"]["pairs"] == 11 and "margins_mean" in r["extra"]["search"]
  out = rp.write_report(str(tmp_path), r, sft_dialogues=sft, dpo_dialogues=dpo, search_stats=stats)
  assert set(out) == {"report.json", "report.md", "reward.png", "turns.png", "search.png"}
  assert rp.load_report(out["report.json"]) == json.loads(json.dumps(r))
  md = (tmp_path / "report.md").read_text()
  # the table and the test lines carry this run's numbers, worked out here from the dialogues
  # (exact: rates of 5 binary rewards, means of integer turns, exact permutation / McNemar p)
  rate = lambda ds: 100 * np.mean([d.outcome["reward"] for d in ds])
  turns = lambda ds: np.mean([d.outcome["num_turns"] for d in ds])
  for name, ds, key in (("SFT", sft, "sft"), ("DPO", dpo, "dpo")):
    lo, hi = r[key]["ci95"]
    assert f"| {name} | 5 | {rate(ds):.2f}% | [{100 * lo:.2f}%, {100 * hi:.2f}%] | {turns(ds):.2f} |" in md, md
  assert (rate(sft), rate(dpo), turns(sft), turns(dpo)) == (40.0, 80.0, 2.8, 3.8)
  assert lo <= 0.8 <= hi
  assert f"- DPO − SFT: **+{rate(dpo) - rate(sft):.2f}%**" in md
  # per-condition differences (+1, 0, 0, 0, +1): two non-zero of +1 → P(|sum| >= 2) = 2/4, one-sided 1/4;
  # McNemar: 2 discordant pairs, both for DPO → 2 * 0.5^2
  assert "- p-value: **0.5** (paired sign-flip" in md and "- one-sided p (H1: DPO > SFT): 0.25" in md
  assert "- exact McNemar p (dialogue pairs): 0.5" in md
  assert "- preference pairs used for DPO: **11**" in md and "| search |" in md
  for name in ("reward.png", "turns.png", "search.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
  # bad reports are refused before anything is written
  with pytest.raises(ValueError, match="'pairs'"):
    rp.write_report(str(tmp_path / "bad"), dict(r, pairs=-1))
  assert not (tmp_path / "bad" / "report.json").exists()


def test_load_report_names_file(tmp_path):
  p = tmp_path / "report.json"
  p.write_text(json.dumps(dict(GOOD, task="x")))
  with pytest.raises(ValueError, match="report.json.*'task'"):
    rp.load_report(str(p))


def _p4g(values, prefix="c", turns=3, order=None):
  """P4G dialogues: value None = an unparsed outcome (rollout writes reward 0.0, donation None)."""
  out = []
  for i, v in enumerate(values):
    out.append(Dialogue(id=f"{prefix}{i}/s0", task="p4g", turns=[Turn("user", "hi")], condition={},
                        outcome={"reward": 0.0 if v is None else float(v), "donation": v,
                                 "num_turns": turns + i % 3, "condition_id": f"c{i}"}))
  return out


def _table_rows(md: str) -> dict:
  rows = {}
  for line in md.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0] in ("SFT", "DPO"):
      rows.setdefault(cells[0], cells)  # the first table is the SFT/DPO one
  return rows


def test_report_table_recomputed_from_dialogues():
  sft_v = [0.5, None, 1.0, 0.25, None, 2.0, 0.0, 0.75]
  dpo_v = [1.0, 1.5, None, 0.5, 2.0, 2.0, 0.25, 1.25]
  sft, dpo = _p4g(sft_v), _p4g(dpo_v, turns=5)
  r = rp.build_report("p4g", sft, dpo, pairs_count=3, wall_seconds={})
  rows = _table_rows(rp.render_markdown(r))
  for name, vals, ds in (("SFT", sft_v, sft), ("DPO", dpo_v, dpo)):
    kept = [(v, d) for v, d in zip(vals, ds) if v is not None]   # unparsed: left out, not $0
    mean = sum(v for v, _ in kept) / len(kept)
    turns = sum(d.outcome["num_turns"] for _, d in kept) / len(kept)
    assert rows[name][1] == str(len(kept))
    assert rows[name][2] == f"${mean:.2f}"
    assert rows[name][4] == f"{turns:.2f}"
    assert r[name.lower()]["reward_mean"] == pytest.approx(mean)
  assert r["extra"]["unparsed"] == {"sft": {"count": 2, "total": 8, "rate": 0.25},
                                    "dpo": {"count": 1, "total": 8, "rate": 0.125}}
  assert "SFT 2/8 (25.0%), DPO 1/8 (12.5%)" in rp.render_markdown(r)


def _paired_p_by_id(sft, dpo):
  """Two-sided exact sign-flip p, pairing by condition id (written out independently)."""
  import itertools
  a = {d.outcome["condition_id"]: d.outcome["reward"] for d in sft}
  b = {d.outcome["condition_id"]: d.outcome["reward"] for d in dpo}
  diffs = [b[c] - a[c] for c in a]
  obs = abs(sum(diffs))
  hits = sum(abs(sum(s * x for s, x in zip(signs, diffs))) >= obs - 1e-12
             for signs in itertools.product((1, -1), repeat=len(diffs)))
  return hits / 2 ** len(diffs)


def test_report_pairs_by_condition_id_not_by_order():
  rng = np.random.default_rng(3)
  sft_v = rng.uniform(0, 1, 10).round(2)
  dpo_v = (sft_v + np.array([0.9, 0.8, 0.7, 0.6, -0.1, 0.5, 0.4, -0.2, 0.3, 0.2])).round(2)
  sft, dpo = _p4g(sft_v.tolist()), _p4g(dpo_v.tolist())
  shuffled = [dpo[i] for i in rng.permutation(len(dpo))]
  assert [d.id for d in shuffled] != [d.id for d in dpo]
  r = rp.build_report("p4g", sft, shuffled, pairs_count=0, wall_seconds={})
  want = _paired_p_by_id(sft, dpo)
  assert r["p_value"] == pytest.approx(want)
  assert r["extra"]["n_paired_conditions"] == 10
  # the same dialogues paired by list position give a different p, so the check can tell
  by_position = [Dialogue(d.id, d.task, d.turns, {}, dict(d.outcome, condition_id=s.outcome["condition_id"]))
                 for s, d in zip(sft, shuffled)]
  assert _paired_p_by_id(sft, by_position) != pytest.approx(want)


def test_simulator_behaviour_counts_by_hand():
  """Ended-by-simulator, engaged (ES) and stated/non-zero donation (P4G) rates over dialogues."""
  es = _dialogues([1, 0, 0, 1])
  es[1].outcome["terminal"] = False
  es[2].outcome["terminal"] = False
  es[0].turns = [Turn("user", "one two three"), Turn("agent", "x y"), Turn("user", "a")]
  got = rp.simulator_behaviour("es", es)
  assert got["n"] == 4 and got["ended_by_simulator"] == 0.5 and got["engaged"] == 0.5
  assert got["mean_user_words"] == pytest.approx((2 + 1 + 1 + 1) / 4)
  p4g = _p4g([0.5, None, 0.0, 2.0, None])
  got = rp.simulator_behaviour("p4g", p4g)
  assert got["donation_stated"] == 3 / 5 and got["donation_nonzero"] == 2 / 5 and got["ended_by_simulator"] == 0
  r = rp.build_report("p4g", p4g, _p4g([1.0, 1.0, None, 0.0, 0.5]), pairs_count=1, wall_seconds={})
  assert r["extra"]["simulator"]["dpo"]["donation_stated"] == 4 / 5
  assert "## What the simulated user did" in rp.render_markdown(r)


def test_search_unparsed_outcomes_in_report_md():
  r = rp.build_report("p4g", _p4g([0.5, 1.0]), _p4g([1.0, 0.5]), pairs_count=1, wall_seconds={})
  r["extra"]["search_outcomes"] = {"children": 189, "unparsed": 15, "unparsed_rate": 15 / 189}
  rp.validate_report(r)
  assert "- search: 15 of 189 tree nodes had an unparsed outcome (7.9%" in rp.render_markdown(r)
