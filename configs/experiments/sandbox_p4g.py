"""Sandbox P4G ablation grid (issue 13): reward horizon, baselines, held-out simulator, oracle, transfer.

  python launch/experiment.py --config=configs/experiments/sandbox_p4g.py \
      --workdir=workdirs/exp_p4g --variants=sft,future,turn,corpus_mix,rft,best_of_n,transfer --seeds=0,1,2

Sizes as configs/experiments/sandbox_es.py (SFT, search, DPO as in configs/sandbox_p4g.py;
evaluation 100 held-out conditions x 2 samples; best-of-2; RFT on chosen turns with value >= $1).
`transfer` reads the ES grid's future-search pairs (workdirs/exp_es).

Measured (docs/results/sandbox_ablation_p4g.json): 86 min wall clock for seeds 1 and 2 in full and
seed 0's remaining variants (three parallel processes on a 2-core machine shared with the ES
additions and test runs, load average 8-12), after seed 0's sft/future/turn (~34 min, an earlier
session). Step times total 17,369 s.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_common


def get_config():
  return grid_common.grid_config("sandbox_p4g", rft_min_value=1.0, transfer_from="workdirs/exp_es")
