"""Sandbox ES ablation grid (issue 13): reward horizon, baselines, held-out simulator, oracle, transfer.

  python launch/experiment.py --config=configs/experiments/sandbox_es.py \
      --workdir=workdirs/exp_es --variants=sft,future,turn,corpus_mix,rft,best_of_n,transfer --seeds=0,1,2

Sizes (reduced from configs/sandbox_es.py to fit a shared 2-core machine): the pipeline's SFT
(agent 150 steps, simulator 400 steps), search (96 trees, budget 8, k 3) and DPO (5 epochs)
unchanged; evaluation on 100 held-out conditions x 2 samples per seed (the demo: 250 x 2); one
held-out simulator (seed +100, its own sandbox training split); best-of-2 (2 candidates per turn);
corpus_mix at as many DPO steps as future; RFT 50 steps at lr 1e-3 on the chosen turns with value
>= 0.5. `transfer` reads the P4G grid's future-search pairs (workdirs/exp_p4g, relative to the
working directory): run that grid's future variant for the same seeds first.

Measured (docs/results/sandbox_ablation_es.json): the six non-transfer variants took 69 min wall
clock on a 2-core machine shared with other jobs (load average 7-11), the three seeds as parallel
processes; adding the held-out simulator of seeds 1 and 2 and the transfer variant took another
~70 min beside the P4G grid (step times: held-out simulator 482 and 665 s for seeds 1 and 2, transfer DPO 742-1650 s per seed
under that load). Step times total 12,415 s.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_common


def get_config():
  return grid_common.grid_config("sandbox_es", transfer_from="workdirs/exp_p4g")
