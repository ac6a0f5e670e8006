"""Sandbox P4G ablation grid (issue 13): reward horizon, baselines, held-out simulator, oracle.

  python launch/experiment.py --config=configs/experiments/sandbox_p4g.py \
      --workdir=workdirs/exp_p4g --variants=sft,future,turn,best_of_n,corpus_mix,rft --seeds=0,1,2

Sizes as configs/experiments/sandbox_es.py (SFT, search, DPO as in configs/sandbox_p4g.py;
evaluation 100 held-out conditions x 2 samples; best-of-2; RFT on chosen turns with value >= $1).

Measured: only seed 0 of sft, future, turn ran (docs/results/sandbox_ablation_p4g.json), with
`--seeds=0 --variants=sft,future,turn --config.experiment.ensemble_size=1`; the full grid (3 seeds,
all variants) did not fit in the session's time.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_common


def get_config():
  return grid_common.grid_config("sandbox_p4g", rft_min_value=1.0, transfer_from="workdirs/exp_es")
