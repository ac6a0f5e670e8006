"""Real ESConv data, tiny models from scratch on CPU (2 cores, within 45 minutes).

  python launch/pipeline.py --config=configs/esconv_tiny.py \
      --config.data.path=../shared/data/esconv --workdir=workdirs/esconv_tiny
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base


def get_config():
  c = base.get_config()
  c.name = "esconv_tiny"
  c.data.source = "esconv"
  # data.path: set --config.data.path=../shared/data/esconv
  c.tokenizer.vocab_size = 4096
  for role in ("agent", "simulator"):
    c.model[role].hidden_size = 192
    c.model[role].intermediate_size = 512
    c.model[role].num_hidden_layers = 3
    c.model[role].num_attention_heads = 6
    c.model[role].max_position_embeddings = 1024
  c.sft.agent_steps = 300
  c.sft.simulator_steps = 300
  c.sft.batch_size = 16
  c.sft.learning_rate = 2e-3
  c.search.n_conditions = 16
  c.search.trees_per_shard = 8
  c.search.max_turns = 8
  c.search.max_depth = 2
  c.search.budget = 4
  c.search.agent_sampling.max_new_tokens = 40
  c.search.simulator_sampling.max_new_tokens = 40
  c.eval.n_conditions = 64
  c.eval.samples_per_condition = 1
  c.eval.max_agent_turns = 8
  c.eval.agent_sampling.max_new_tokens = 40
  c.eval.simulator_sampling.max_new_tokens = 40
  return c
