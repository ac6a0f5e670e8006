"""The whole experiment on tiny sizes with the real models: every variant's steps run end to end
(pipeline stages through the View, best-of-N, oracle, held-out simulator, RFT, corpus pairs)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from engage_jax.experiments import runner

# Tolerances: the gap is a float64 difference of two numbers of the same report (approx, relative
# 1e-6): the same arithmetic on any CPU.

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _tiny(task: str = "es"):
  spec = importlib.util.spec_from_file_location(f"_exp_{task}", REPO / "configs" / "experiments" / f"sandbox_{task}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.sandbox_train, c.data.sandbox_valid = 200, 20
  c.tokenizer.vocab_size = 400
  for role in ("agent", "simulator"):
    c.model[role].hidden_size, c.model[role].intermediate_size, c.model[role].num_hidden_layers = 32, 64, 1
  c.sft.agent_steps = c.sft.simulator_steps = 4
  c.sft.batch_size, c.sft.warmup_steps, c.sft.eval_every = 8, 1, 100
  c.dpo.num_epochs, c.dpo.batch_size, c.dpo.warmup_steps = 1, 4, 1
  c.search.n_conditions, c.search.trees_per_shard, c.search.budget = 2, 2, 2
  c.search.agent_sampling.max_new_tokens = c.search.simulator_sampling.max_new_tokens = 12
  c.eval.n_conditions, c.eval.samples_per_condition = 3, 1
  c.eval.agent_sampling.max_new_tokens = c.eval.simulator_sampling.max_new_tokens = 12
  c.experiment.update(best_of_n=2, rft_steps=2, rft_min_value=0.0)
  return c


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
  names = ["sft", "future", "turn", "best_of_n", "corpus_mix", "rft"]
  exp = runner.Experiment(_tiny(), tmp_path, names, [0])
  summary = exp.run()
  runner.write(summary, tmp_path, "es")
  t = json.loads((tmp_path / "experiment.json").read_text())["variants"]
  assert set(t) == set(names)
  for v in names:
    assert t[v]["n_units"] == 3 and t[v]["oracle_mean"] is not None
    assert set(t[v]["by_simulator"]) == {"sim-0", "sim-1"}
  assert t["best_of_n"]["agent_samples_per_chat"] > 0
  s0 = tmp_path / "seed-0"
  assert (s0 / "turn" / "pairs").is_dir() and (s0 / "rft" / "agent" / "hf" / "config.json").exists()
  manifest = json.loads((s0 / "turn" / "search" / "search_config.json").read_text())
  assert manifest["config"]["reward_horizon"] == "turn"
  # the ensemble evaluation is paired: every agent meets every simulator on the same (condition,
  # sample) chats, those of the pipeline's eval_sft
  from engage_jax import evaluate

  def chats(path):
    return sorted((evaluate.condition_id(d), d.outcome.get("sample")) for d in evaluate.load_dialogues(str(path)))
  want = chats(s0 / "base" / "eval_sft" / "dialogues.jsonl")
  assert len(want) == 3
  for v in names:
    if v != "sft":
      assert chats(s0 / v / "eval" / "dialogues.jsonl") == want, v
    assert chats(s0 / v / "ens" / "sim-1" / "dialogues.jsonl") == want, v
  # resume: a second run computes nothing
  again = runner.Experiment(_tiny(), tmp_path, names, [0])
  again.run()
  assert again.ran == []


@pytest.mark.slow
def test_pipeline_report_has_oracle_per_model(tmp_path):
  from engage_jax import pipeline, report
  cfg = runner.pipeline_config(_tiny(), 0)
  pipeline.run(cfg, str(tmp_path))
  rep = report.load_report(str(tmp_path / "report.json"))
  for m in ("sft", "dpo"):
    o = rep["oracle"][m]
    assert o["n"] == 3 and 0.0 <= o["expected_mean"] <= 1.0 and 0.0 <= o["first_turn_helpful"] <= 1.0
    assert o["transcript"]["n"] == 3
    assert o["sim_minus_oracle"] == pytest.approx(rep[m]["reward_mean"] - o["expected_mean"])

