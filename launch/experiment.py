"""Named variants x seeds over the pipeline (shared stages once, resumable) → a comparison table.

  python launch/experiment.py --config=configs/experiments/sandbox_es.py --workdir=workdirs/exp_es \
      [--variants=sft,future,turn] [--seeds=0,1,2]

Writes DIR/experiment.json, DIR/experiment.md and DIR/reward.png (engage_jax.experiments.runner).
A rerun skips every finished step and variant (each variant's steps are workdir stages in
DIR/seed-S/<variant>/stages.json). Bad variants / settings, and a finished step whose config values
changed since, are one-line errors (exit 2) before any work.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import _common
from absl import flags

from engage_jax.experiments import runner, variants
from engage_jax.errors import InputError

_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: config.experiment.variants).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds (default: config.experiment.seeds).")


def main():

  cfg = _common.config()
  if "experiment" not in cfg:
    raise InputError("the config has no experiment section (use a file under configs/experiments/)", "--config")
  names = variants.parse_list(_VARIANTS.value if _VARIANTS.value else cfg.experiment.variants, "variants")
  seeds = variants.parse_seeds(_SEEDS.value if _SEEDS.value else cfg.experiment.seeds)
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  exp = runner.Experiment(cfg, _common.workdir(), names, seeds, command=command)
  summary = exp.run()
  runner.write(summary, Path(_common.workdir()), cfg.task)
  print(runner.render_markdown(summary, cfg.task))
  print(f"[experiment] wrote {_common.workdir()}/experiment.json, experiment.md, reward.png")


if __name__ == "__main__":
  _common.run(main)
