"""The sandbox pipeline end to end at a reduced size, its resumability and its bad-input errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Reduced sizes (CI: about 4-5 minutes on 2 cores). The simulator keeps enough SFT steps to learn
# the sandbox's user dynamics, so the search's pairs can be checked against the known optimum.
SMALL = [
    "--config.sft.agent_steps=100", "--config.sft.simulator_steps=400", "--config.sft.eval_every=0",
    "--config.sft.checkpoint_every=200", "--config.sft.log_every=50",
    "--config.search.n_conditions=24", "--config.search.trees_per_shard=8",
    "--config.dpo.num_epochs=2",
    "--config.eval.n_conditions=24", "--config.eval.samples_per_condition=1",
]


def _launch(script: str, workdir: Path, *extra: str, config: str = "configs/sandbox_es.py"):
  cmd = [sys.executable, f"launch/{script}", f"--config={config}", f"--workdir={workdir}", *SMALL, *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_sandbox_pipeline_end_to_end_and_skip_on_rerun(tmp_path):
  wd = tmp_path / "run"
  proc = _launch("pipeline.py", wd)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  report = json.loads((wd / "report.json").read_text())
  from engage_jax.report import validate_report
  validate_report(report)
  assert report["task"] == "es"
  assert report["sft"]["n"] == report["dpo"]["n"] == 24
  assert 0.0 <= report["p_value"] <= 1.0
  for path in ["tokenizer/tokenizer.json", "sft_agent/hf/model.safetensors", "sft_simulator/hf/config.json",
               "eval_sft/dialogues.jsonl", "search/summary.json", "dpo_agent/hf/model.safetensors",
               "eval_dpo/dialogues.jsonl", "report.md"]:
    assert (wd / path).exists(), path
  assert report["pairs"] == sum(1 for f in (wd / "pairs").glob("*.jsonl")
                                for line in f.read_text().splitlines() if line.strip())
  _check_pairs_prefer_the_helpful_strategy(wd)
  stamp = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()}
  again = _launch("pipeline.py", wd)
  assert again.returncode == 0, again.stderr[-3000:]
  from engage_jax.pipeline import STAGES
  assert again.stdout.count("done already, skipped") == len(STAGES), again.stdout
  assert {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()} == stamp


def _check_pairs_prefer_the_helpful_strategy(wd: Path):
  """The pairs' values and the sandbox's known optimum. Each pair's meta is what it claims: margin =
  chosen_value - rejected_value (to the fp32 rounding of the stored values) >= config margin 0.2,
  values are mean ES rewards in [0, 1], the strategies are those of the texts. Among pairs where exactly one side plays the condition's
  helpful strategy (success 0.6 against 0.08 per turn in the sandbox), the chosen side is the
  helpful one far more often than chance: a one-sided binomial test against 1/2 (pairs chosen at
  random, or by the lower value, give p ~ 0.5 or ~1)."""
  from scipy import stats

  from engage_jax.data import sandbox
  from engage_jax.fileio import read_jsonl
  good = bad = 0
  for f in (wd / "pairs").glob("*.jsonl"):
    for pair in read_jsonl(f):
      m = pair["meta"]
      assert m["margin"] == pytest.approx(m["chosen_value"] - m["rejected_value"], rel=1e-6) and m["margin"] >= 0.2, m
      assert 0.0 <= m["rejected_value"] < m["chosen_value"] <= 1.0, m
      assert m["chosen_strategy"] == sandbox.strategy_of(pair["chosen"][0]["content"], "es"), m
      assert m["rejected_strategy"] == sandbox.strategy_of(pair["rejected"][0]["content"], "es"), m
      opening = pair["prompt"][1]["content"]
      (emotion,) = [e for e, adj in sandbox.EMOTION_ADJ.items() if f"feel {adj} " in opening]
      helpful = sandbox.HELPFUL[emotion]
      chosen = m["chosen_strategy"] == helpful
      rejected = m["rejected_strategy"] == helpful
      good += chosen and not rejected
      bad += rejected and not chosen
  assert good + bad >= 10, (good, bad)
  p = stats.binomtest(good, good + bad, 0.5, alternative="greater").pvalue
  print(f"[pipeline] pairs with one helpful side: {good} chose it, {bad} did not (p = {p:.2g})")
  assert p < 0.01, (good, bad, p)


def test_unknown_config_key_is_an_error(tmp_path):
  proc = _launch("pipeline.py", tmp_path / "x", "--config.sft.no_such_key=3")
  assert proc.returncode != 0
  assert "no_such_key" in proc.stderr
  assert not (tmp_path / "x").exists()


def test_missing_data_path_is_an_error(tmp_path):
  proc = _launch("pipeline.py", tmp_path / "x", "--config.data.path=/nonexistent/esconv",
                 config="configs/esconv_tiny.py")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: missing train.txt, valid.txt, test.txt; got '/nonexistent/esconv' "
                                 "(config.data.path)")
  assert not (tmp_path / "x").exists()


def test_done_stage_with_another_config_value_is_refused(tmp_path):
  """A done stage is refused only when a key it depends on changed; nothing is touched."""
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"name": "something_else"}))
  (wd / "stages.json").write_text(json.dumps({"tokenizer": {"done": True, "wall_seconds": 1.0,
                                                            "config": {"tokenizer.vocab_size": 5}}}))
  before = {p.name: p.read_text() for p in wd.iterdir()}
  proc = _launch("sft.py", wd)
  assert proc.returncode == 2
  assert "stage tokenizer ran with other values" in proc.stderr and "--redo=tokenizer" in proc.stderr
  assert "tokenizer.vocab_size=5 -> 1024" in proc.stderr
  assert {p.name: p.read_text() for p in wd.iterdir()} == before
