"""Iterated search → DPO (config.search_dpo_rounds): round r starts from round r - 1's DPO agent,
eval_dpo evaluates every round's agent on the same conditions, the report has one row per round,
and a finished round is kept on a rerun. The same tiny run (with the held-out simulator) feeds the
real-data study's results writer (engage_jax/experiments/real_study.py)."""
from __future__ import annotations

import json

import pytest

from engage_jax import build, evaluate, pipeline
from engage_jax.workdir import Workdir
from tests.test_stage_resume import _cfg

EVAL = dict(eval__n_conditions=3, eval__samples_per_condition=1, eval__max_agent_turns=1,
            eval__agent_sampling__max_new_tokens=4, eval__simulator_sampling__max_new_tokens=4,
            eval__max_prompt_len=128, dpo__num_epochs=1, dpo__batch_size=2, dpo__max_len=128,
            dpo__min_bucket=32, search__margin=0.0)


def test_each_round_starts_from_the_previous_rounds_dpo_agent(tmp_path):
  wd = Workdir(str(tmp_path))
  one, two, three = (pipeline.round_paths(wd, r) for r in (1, 2, 3))
  assert one["agent"] == wd.path("sft_agent", "hf") and one["dpo"] == wd.path("dpo_agent")
  assert two["agent"] == one["dpo"] / "hf" and three["agent"] == two["dpo"] / "hf"
  assert len({str(p[k]) for p in (one, two, three) for k in ("search", "pairs", "dpo")}) == 9
  assert pipeline.final_agent_dir(_cfg(search_dpo_rounds=3), wd) == three["dpo"] / "hf"
  # rounds search with seeds of their own (round 1 keeps the pipeline's seed)
  seeds = [build.search_config(_cfg(), r).seed for r in (1, 2, 3)]
  assert seeds[0] == _cfg().seed and len(set(seeds)) == 3


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
  wd = tmp_path_factory.mktemp("rounds") / "wd"
  pipeline.run(_cfg(search_dpo_rounds=2, eval__heldout_simulator=True, **EVAL), str(wd))
  return wd


def test_two_rounds_end_to_end(two_rounds):
  wd = two_rounds
  rep = json.loads((wd / "report.json").read_text())
  rows = rep["extra"]["rounds"]
  assert [r["round"] for r in rows] == [1, 2] and rows[0]["p_vs_previous"] is None
  # the last round is the report's DPO agent; every round was evaluated on the same chats' conditions
  assert rows[1]["reward_mean"] == pytest.approx(rep["dpo"]["reward_mean"]) and rows[1]["n"] == rep["dpo"]["n"]
  r1 = evaluate.load_dialogues(str(wd / "eval_dpo" / "round-1" / "dialogues.jsonl"))
  final = evaluate.load_dialogues(str(wd / "eval_dpo" / "dialogues.jsonl"))
  assert sorted(d.id for d in r1) == sorted(d.id for d in final)
  assert rows[0]["reward_mean"] == pytest.approx(evaluate.rewards(r1).mean())
  for r, n_pairs in zip((1, 2), (rows[0]["pairs"], rows[1]["pairs"]), strict=True):
    files = pipeline.pair_files(Workdir(str(wd)), r)
    assert n_pairs == sum(1 for f in files for line in f.read_text().splitlines() if line.strip())
  assert (wd / "rounds" / "round-2" / "dpo_agent" / "hf" / "config.json").is_file()
  assert (wd / "rounds" / "round-2" / "search" / "summary.json").is_file()
  # the sandbox oracle (the world as the user) scores every round's agent, shown in report.md
  assert list(rep["oracle"]) == ["sft", "round-1", "dpo"]
  kept = evaluate.load_dialogues(str(wd / "oracle" / "dpo.jsonl"))  # the world's chats behind the summary
  assert rep["oracle"]["dpo"]["expected_mean"] == pytest.approx(sum(d.outcome["expected"] for d in kept) / len(kept))
  md = (wd / "report.md").read_text()
  assert "| round-1 | 3 |" in md and "| search → DPO round |" in md


def test_a_finished_round_is_kept_when_the_stage_reruns(two_rounds, capsys):
  wd = Workdir(str(two_rounds))
  marker = two_rounds / "rounds" / "round-2" / "dpo_agent" / "round.json"
  stamp = marker.stat().st_mtime_ns
  info = pipeline.stage_rounds(_cfg(search_dpo_rounds=2, eval__heldout_simulator=True, **EVAL), wd)
  assert marker.stat().st_mtime_ns == stamp and info["round-2"] == json.loads(marker.read_text())
  assert "round 2 of 2" not in capsys.readouterr().out


def test_real_study_results_match_the_workdir(two_rounds, tmp_path):
  from engage_jax.experiments import real_study
  s = real_study.write(two_rounds, tmp_path / "real_es", command="tiny")
  rep = json.loads((two_rounds / "report.json").read_text())
  assert s["sft"]["mean"] == pytest.approx(rep["sft"]["reward_mean"]) and s["dpo"]["n"] == rep["dpo"]["n"]
  assert s["p_value"] == rep["p_value"] and s["pairs"] == rep["pairs"] and s["command"] == "tiny"
  held = rep["extra"]["heldout_simulator"]
  assert s["heldout_simulator"]["p_value"] == held["p_value"]
  assert s["heldout_simulator"]["dpo"]["mean"] == pytest.approx(held["dpo"]["reward_mean"])
  # words per agent turn: only the turns the agent wrote (the last num_turns agent turns)
  dpo = evaluate.load_dialogues(str(two_rounds / "eval_dpo" / "dialogues.jsonl"))
  words = [len(t.text.split()) for d in dpo for t in [t for t in d.turns if t.role == "agent"][-d.outcome["num_turns"]:]]
  assert s["dpo"]["words_per_agent_turn"] == pytest.approx(sum(words) / len(words))
  assert set(s["validation_loss"]) == {"agent", "simulator", "heldout_simulator"}
  assert list(s["stage_seconds"])[:2] == ["tokenizer", "sft_agent"] and len(s["transcripts"]) == 3
  for t in s["transcripts"]:
    assert t["sft"]["turns"][:1] == t["dpo"]["turns"][:1] or not t["sft"]["turns"]
  for suffix in (".json", ".md", ".png"):
    assert (tmp_path / f"real_es{suffix}").stat().st_size > 0
  assert s["tree_variance_share"] == pytest.approx(s["trees_with_variance"] / s["trees"])
