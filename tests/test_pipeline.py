"""The sandbox pipeline end to end at a reduced size, its resumability and its bad-input errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SMALL = [
    "--config.data.sandbox_train=240", "--config.data.sandbox_valid=40", "--config.data.max_len=128",
    "--config.tokenizer.vocab_size=400",
    "--config.model.agent.hidden_size=64", "--config.model.agent.intermediate_size=128",
    "--config.model.simulator.hidden_size=64", "--config.model.simulator.intermediate_size=128",
    "--config.sft.agent_steps=40", "--config.sft.simulator_steps=40", "--config.sft.batch_size=16",
    "--config.sft.eval_every=20", "--config.sft.checkpoint_every=20", "--config.sft.log_every=10",
    "--config.search.n_conditions=6", "--config.search.trees_per_shard=3", "--config.search.budget=2",
    "--config.search.max_prompt_len=128", "--config.search.max_new_tokens=24",
    "--config.search.sim_max_new_tokens=24", "--config.search.margin=0.0",
    "--config.dpo.steps=6", "--config.dpo.batch_size=4", "--config.dpo.max_len=128",
    "--config.eval.n_conditions=8", "--config.eval.samples_per_condition=1", "--config.eval.max_prompt_len=128",
    "--config.eval.max_new_tokens=24", "--config.eval.sim_max_new_tokens=24",
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
  assert report["sft"]["n"] == report["dpo"]["n"] == 8
  assert 0.0 <= report["p_value"] <= 1.0
  for path in ["tokenizer/tokenizer.json", "sft_agent/hf/model.safetensors", "sft_simulator/hf/config.json",
               "eval_sft/dialogues.jsonl", "search/summary.json", "dpo_agent/hf/model.safetensors",
               "eval_dpo/dialogues.jsonl", "report.md"]:
    assert (wd / path).exists(), path
  assert report["pairs"] == sum(1 for f in (wd / "search" / "pairs").glob("*.jsonl")
                                for line in f.read_text().splitlines() if line.strip())
  stamp = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()}
  again = _launch("pipeline.py", wd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("done already, skipped") == 8, again.stdout
  assert {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file()} == stamp


def test_unknown_config_key_is_an_error(tmp_path):
  proc = _launch("pipeline.py", tmp_path / "x", "--config.sft.no_such_key=3")
  assert proc.returncode != 0
  assert "no_such_key" in proc.stderr
  assert not (tmp_path / "x").exists()


def test_missing_data_path_is_an_error(tmp_path):
  proc = _launch("pipeline.py", tmp_path / "x", "--config.data.path=/nonexistent/esconv",
                 config="configs/esconv_tiny.py")
  assert proc.returncode == 2
  assert "config.data.path='/nonexistent/esconv': missing train.txt" in proc.stderr
  assert not (tmp_path / "x").exists()


def test_workdir_from_another_config_is_refused(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"name": "something_else"}))
  before = (wd / "config.json").read_text()
  proc = _launch("sft.py", wd)
  assert proc.returncode == 2
  assert "belongs to another config" in proc.stderr
  assert (wd / "config.json").read_text() == before and sorted(p.name for p in wd.iterdir()) == ["config.json"]
