"""The held-out simulator (config.eval.heldout_simulator): trained on the other half of the training
dialogues with another seed, evaluated with the same conditions and seeds, and reported beside the
search's simulator with its own paired test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engage_jax import build, evaluate, pipeline, report
from engage_jax.data.dialogue import Dialogue, Turn
from tests.test_stage_resume import _cfg

STAGES = ("tokenizer", "sft_agent", "sft_simulator", "sft_heldout_simulator", "eval_sft")


def test_the_two_simulators_train_on_disjoint_halves():
  cfg = _cfg(eval__heldout_simulator=True)
  corpus = {"train": [Dialogue(f"d{i}", "es", [], {}) for i in range(7)]}
  ids = {role: [d.id for d in build.train_dialogues(cfg, corpus, role)]
         for role in ("agent", "simulator", "heldout_simulator")}
  assert ids["agent"] == [f"d{i}" for i in range(7)]
  assert not set(ids["simulator"]) & set(ids["heldout_simulator"])
  assert sorted(ids["simulator"] + ids["heldout_simulator"]) == sorted(ids["agent"])
  off = _cfg()  # the default: every role trains on everything, the held-out stage does nothing
  assert [d.id for d in build.train_dialogues(off, corpus, "simulator")] == ids["agent"]


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("heldout") / "wd"
  cfg = _cfg(eval__heldout_simulator=True, eval__n_conditions=3, eval__samples_per_condition=2,
             eval__max_agent_turns=1, eval__agent_sampling__max_new_tokens=4,
             eval__simulator_sampling__max_new_tokens=4, eval__max_prompt_len=128)
  pipeline.run(cfg, str(wd), STAGES)
  return wd


def _info(stages: dict, stage: str) -> dict:
  return stages["stages"][stage]["info"] if "stages" in stages else stages[stage]["info"]


def test_heldout_simulator_is_its_own_model_and_sees_the_same_conditions(heldout_run):
  wd = heldout_run
  stages = json.loads((wd / "stages.json").read_text())
  info = {s: _info(stages, s) for s in ("sft_simulator", "sft_heldout_simulator")}
  assert info["sft_simulator"]["dialogues"] == 20 and info["sft_heldout_simulator"]["dialogues"] == 20
  from safetensors.numpy import load_file
  a = load_file(str(wd / "sft_simulator" / "hf" / "model.safetensors"))
  b = load_file(str(wd / "sft_heldout_simulator" / "hf" / "model.safetensors"))
  assert a.keys() == b.keys()
  # other data and another seed: some trained tensor differs (same init, so only training moves it)
  assert any(not np.array_equal(a[k], b[k]) for k in a)
  main = evaluate.load_dialogues(str(wd / "eval_sft" / "dialogues.jsonl"))
  held = evaluate.load_dialogues(str(wd / "eval_sft" / "heldout" / "dialogues.jsonl"))
  key = lambda d: (evaluate.condition_id(d), d.id)
  assert sorted(map(key, main)) == sorted(map(key, held)) and len(main) == 6
  held_summary = json.loads((wd / "eval_sft" / "heldout" / "summary.json").read_text())
  assert held_summary["n"] == 6 and held_summary["reward_mean"] == pytest.approx(evaluate.rewards(held).mean())
  assert _info(stages, "eval_sft")["heldout_simulator"] == held_summary


def _chat(cid: str, sample: int, reward: float) -> Dialogue:
  return Dialogue(f"{cid}/s{sample}", "es", [Turn("agent", "hi"), Turn("user", "ok")], {},
                  outcome={"condition_id": cid, "reward": reward})


def test_report_block_pairs_by_condition():
  base = [0.0, 0.5, 1.0, 0.0]
  sft = [_chat(f"c{i}", s, r) for i, r in enumerate(base) for s in (0, 1)]
  dpo = [_chat(f"c{i}", s, r if i == 3 else 1.0) for i, r in enumerate(base) for s in (0, 1)][::-1]
  block = report.heldout_simulator(sft, dpo, seed=0)
  assert block["n_paired_conditions"] == 4
  assert block["sft"]["reward_mean"] == pytest.approx(0.375) and block["dpo"]["reward_mean"] == pytest.approx(0.75)
  # paired per condition (the DPO list is reversed): differences (1, 0.5, 0, 0); of the 2^4 sign
  # patterns only the two that keep 1 and 0.5 together reach |mean| = 0.375, times 4 patterns of the zeros
  assert block["p_value"] == pytest.approx(8 / 16)
  same = report.heldout_simulator(sft, sft, seed=0)
  assert same["p_value"] == 1.0 and same["dpo"]["reward_mean"] == same["sft"]["reward_mean"]
