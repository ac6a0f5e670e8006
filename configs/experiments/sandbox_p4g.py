"""Sandbox P4G ablation grid (issue 13): reward horizon, baselines, held-out simulator, oracle.

  python launch/experiment.py --config=configs/experiments/sandbox_p4g.py \
      --workdir=workdirs/exp_p4g --variants=sft,future,turn,best_of_n,corpus_mix,rft --seeds=0,1,2

Sizes as configs/experiments/sandbox_es.py (SFT, search, DPO as in configs/sandbox_p4g.py;
evaluation 100 held-out conditions x 2 samples; best-of-2; RFT on chosen turns with value >= $1).

Measured: only seed 0 of sft, future, turn ran (docs/results/sandbox_ablation_p4g.json), with
`--seeds=0 --variants=sft,future,turn --config.experiment.ensemble_size=1`; the full grid (3 seeds,
all variants) did not fit in the session's time.
"""
import importlib.util
import os

import ml_collections


def _load(name: str):
  """configs/<name>.py by path (this directory has files of the same names)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_engage_configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def experiment_section(**overrides) -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict(dict(
      variants="sft,future,turn,corpus_mix,rft,best_of_n",
      seeds="0,1,2",
      ensemble_size=2,         # simulators: the search's own + (ensemble_size - 1) held out
      oracle=True,             # evaluate every agent against the sandbox world as well
      best_of_n=2,             # candidates per turn of the best_of_n variant
      corpus_pairs=0,          # corpus pairs of corpus_mix (0: as many as the search's pairs)
      rft_steps=50,
      rft_learning_rate=1e-3,
      rft_min_value=1.0,       # chosen turns with at least this search value ($) are RFT data
  ))
  e.update(overrides)
  return e


def get_config():
  c = _load("sandbox_p4g").get_config()
  c.name = "experiment_sandbox_p4g"
  c.eval.n_conditions = 100
  c.experiment = experiment_section()
  return c
