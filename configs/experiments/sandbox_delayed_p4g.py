"""Delayed-effect P4G grid (issue 28): future vs turn reward where they disagree.

  python launch/experiment.py --config=configs/experiments/sandbox_delayed_p4g.py \\
      --workdir=workdirs/exp_delayed_p4g --variants=sft,future,turn,rft,corpus_mix,best_of_n --seeds=0,1,2

World: engage_jax/data/sandbox.py, world "delayed" (pressure, the Emotion appeal, draws a pledge
the turn reward reads as $1-2 but lowers the donation; a Credibility appeal followed later by a
Logical appeal raises it): long-run optimum $1.5625, greedy turn-level policy $0.325, uniform
corpus agent $0.620. Sizes as configs/experiments/sandbox_delayed_es.py (RFT on chosen turns
with value >= $1) except, to fit the machine at load 27 (P4G chats are twice as long as ES's;
the simulator's SFT took 17 s/step): simulator 150 SFT steps, search 32 trees, DPO 30 steps,
evaluation 32 held-out conditions x 2 samples. Results and times: docs/results/sandbox_delayed_p4g.md. The committed results ran smaller
(the machine at load 15-27, every step and time in the results' notes): --config.search.n_conditions=8
--config.search.trees_per_shard=8 --config.search.budget=4 --config.dpo.steps=20
--config.eval.samples_per_condition=1.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_common


def get_config():
  c = grid_common.delayed_grid_config("sandbox_p4g", rft_min_value=1.0)
  c.sft.simulator_steps = 150
  c.search.n_conditions = 32
  c.dpo.steps = 30
  c.eval.n_conditions = 32
  return c
