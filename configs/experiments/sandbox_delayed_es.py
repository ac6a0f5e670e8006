"""Delayed-effect ES grid (issue 28): future vs turn reward where they disagree.

  python launch/experiment.py --config=configs/experiments/sandbox_delayed_es.py \\
      --workdir=workdirs/exp_delayed_es --variants=sft,future,turn,rft,corpus_mix,best_of_n --seeds=0,1,2

World: engage_jax/data/sandbox.py, world "delayed" (Reassurance draws a warm, regex-matching reply
but closes the path; only Reflection before a Suggestion ends with "i feel better"): long-run
optimum 0.90, greedy turn-level policy 0.10, uniform corpus agent 0.186. The reward reads the
last user turn only (reward.es_last_n = 1), i.e. the chat's final reply, not a warm line before it.
Sizes (configs/experiments/grid_common.py delayed_grid_config): SFT agent 120, simulator 300
steps (the demo: 150, 400), search 48 trees x budget 8 x k 3 to depth 3, DPO 40 steps,
evaluation 48 held-out conditions x 2 samples, best-of-2, RFT 50 steps on chosen turns with
value >= 0.5, no held-out simulator. Results and times: docs/results/sandbox_delayed_es.md. The committed results ran smaller
(the machine at load 17-27, every step and time in the results' notes): --config.search.n_conditions=16 --config.dpo.steps=20
--config.eval.samples_per_condition=1.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_common


def get_config():
  c = grid_common.delayed_grid_config("sandbox_es")
  c.reward.es_last_n = 1
  return c
