"""Sandbox ES ablation grid (issue 13): reward horizon, baselines, held-out simulator, oracle.

  python launch/experiment.py --config=configs/experiments/sandbox_es.py \
      --workdir=workdirs/exp_es --variants=sft,future,turn,best_of_n,corpus_mix,rft --seeds=0,1,2

Sizes (reduced from configs/sandbox_es.py to fit a shared 2-core machine): the pipeline's SFT
(agent 150 steps, simulator 400 steps), search (96 trees, budget 8, k 3) and DPO (5 epochs)
unchanged; evaluation on 100 held-out conditions x 2 samples per seed (the demo: 250 x 2); one
held-out simulator (seed +100, its own sandbox training split); best-of-2 (2 candidates per turn);
corpus_mix at as many DPO steps as future; RFT 50 steps at lr 1e-3 on the chosen turns with value
>= 0.5.

Measured (docs/results/sandbox_ablation_es.json): 69 min wall clock on a 2-core machine shared with
other jobs (load average 7-11), the three seeds as parallel processes
(`--seeds=S`, seeds 1 and 2 with `--config.experiment.ensemble_size=1` to fit: the held-out
simulator ran for seed 0 only), then the command above to aggregate (12 s).
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
      rft_min_value=0.5,       # chosen turns with at least this search value are RFT data
  ))
  e.update(overrides)
  return e


def get_config():
  c = _load("sandbox_es").get_config()
  c.name = "experiment_sandbox_es"
  c.eval.n_conditions = 100
  c.experiment = experiment_section()
  return c
