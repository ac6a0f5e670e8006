"""The fixed reduced SmolLM2 ESConv run of the throughput issue: stage times of the same work.

    .venv/bin/python benchmarks/reduced_run.py [--workdir W] [--out benchmarks/results/reduced_run.json]

Runs `launch/pipeline.py --config=configs/esconv_smollm2.py` with every size spelled out (the
configs/esconv_smollm2.py of 2026-12-02 that the issue's 185 s figure ran with, so that later
changes of the config's defaults do not change the work): 40 training dialogues, SFT of 4 x 256
tokens per step, 4 search trees x 3 expansions (k 3, depth 2, 3 agent turns), 8 evaluation
conditions x 3 agent turns, no held-out simulator, one round. SFT steps: `--sft_steps A,S`
(default 3,4: after the multi-target windows about 290 agent / 270 simulator target tokens a step,
the ~950 / ~1,150 target tokens that 10 steps of the old one-target examples trained).
Writes the stage seconds (stages.json), total, loadavg before/after, and the commit; the
persistent compilation cache is used as the launcher uses it (pass `--cold` for an empty one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402

SIZES = [
    "--config.data.max_train_dialogues=40", "--config.data.max_valid_dialogues=2", "--config.data.max_len=256",
    "--config.sft.batch_size=4", "--config.sft.learning_rate=3e-5", "--config.sft.warmup_steps=5",
    "--config.sft.log_every=5", "--config.sft.eval_every=0", "--config.sft.checkpoint_every=20",
    "--config.search.n_conditions=4", "--config.search.trees_per_shard=4", "--config.search.k=3",
    "--config.search.budget=3", "--config.search.max_depth=2", "--config.search.max_turns=3",
    "--config.search.max_prompt_len=256",
    "--config.eval.n_conditions=8", "--config.eval.samples_per_condition=1", "--config.eval.max_agent_turns=3",
    "--config.eval.max_prompt_len=256", "--config.eval.heldout_simulator=false",
    "--config.dpo.batch_size=4", "--config.dpo.num_epochs=1", "--config.dpo.learning_rate=5e-6",
    "--config.dpo.heldout_fraction=0.0", "--config.dpo.warmup_steps=2", "--config.search_dpo_rounds=1",
]


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="")
  ap.add_argument("--sft_steps", default="3,4", help="agent,simulator SFT steps")
  ap.add_argument("--cold", action="store_true", help="an empty persistent compilation cache")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reduced_run.json"))
  a = ap.parse_args(argv)
  agent, sim = (int(x) for x in a.sft_steps.split(","))
  wd = a.workdir or tempfile.mkdtemp(prefix="reduced_run_")
  cmd = [sys.executable, "launch/pipeline.py", "--config=configs/esconv_smollm2.py", f"--workdir={wd}", *SIZES,
         f"--config.sft.agent_steps={agent}", f"--config.sft.simulator_steps={sim}"]
  env = dict(os.environ)
  if a.cold:
    env["ENGAGE_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="xla_cold_")
  load0 = os.getloadavg()[0]
  t0 = time.perf_counter()
  subprocess.run(cmd, cwd=ROOT, env=env, check=True)
  total = time.perf_counter() - t0
  stages = json.loads((Path(wd) / "stages.json").read_text())
  stages = stages.get("stages", stages)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  res = {"command": " ".join(cmd[1:]), "commit": commit, "cold_compile_cache": a.cold,
         "stage_seconds": {k: v.get("wall_seconds") for k, v in stages.items()}, "total_seconds": total,
         "loadavg_1m": {"before": load0, "after": os.getloadavg()[0]}, "machine": _results.machine()}
  return _results.write(res, a.out)


if __name__ == "__main__":
  main()
