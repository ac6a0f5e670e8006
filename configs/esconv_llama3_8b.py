r"""ESConv emotional support with Llama 3 8B (agent and user simulator) on a TPU v5e-16 pod slice.

Set the checkpoint / data placeholders, check the memory plan on the host, then run:

  python launch/plan.py --config=configs/esconv_llama3_8b.py
  python launch/pipeline.py --config=configs/esconv_llama3_8b.py --workdir=gs://BUCKET/esconv_llama3_8b \
    --config.model.agent.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.model.simulator.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.tokenizer.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.data.path=/path/to/esconv

On a pod slice use launch/tpu_vm.sh (it runs the same command on every worker). For 8×H100 use
`--config.mesh.fsdp=8`. The architecture fields below are Llama 3 8B's (launch/plan.py uses them
when `model.agent.path` is not a local directory); with a real checkpoint they are read from its
config.json. Paper reference (arXiv 2506.21497): ES success rate 64.06% (SFT) → 80.47% (DPO).
Search constants not given by the paper are marked "chosen".
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import base

LLAMA3_8B_PATH = "/path/to/Meta-Llama-3-8B-Instruct"   # placeholder: set --config.model.*.path


def llama3_8b(path: str = LLAMA3_8B_PATH):
  """Llama 3 8B: vocab 128256, d 4096, 32 layers, 32 heads, 8 KV heads, FFN 14336, untied."""
  return base.model_config(
      path=path, model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
      tie_word_embeddings=False, rope_theta=500000.0)


def get_config():
  c = base.get_config()
  c.name = "esconv_llama3_8b"

  c.data.source = "esconv"
  c.data.path = "/path/to/esconv"                    # placeholder: dir with ESConv.json
  c.data.max_len = 1024                              # SFT example length (tokens)

  c.tokenizer.path = LLAMA3_8B_PATH                  # placeholder: the checkpoint's tokenizer
  c.tokenizer.vocab_size = 128256                    # used by plan.py without a checkpoint

  c.model.dtype = "bfloat16"                         # compute
  # model.param_dtype: the default ("float32"): fp32 master weights (AdamW); see plan.py
  c.model.remat = True                               # plan.py: training fits only with remat
  c.model.agent = llama3_8b()
  c.model.simulator = llama3_8b()

  # TPU v5e-16: 16 chips × 16 GiB HBM, parameters/optimizer fully sharded over fsdp.
  # 8×H100 (80 GB): data=1, fsdp=8, tensor=1.
  c.mesh.data = 1
  c.mesh.fsdp = 16

  c.sft.agent_steps = 1000
  c.sft.simulator_steps = 1000
  c.sft.batch_size = 16                              # multiple of data×fsdp = 16: local batch 1
  c.sft.grad_accum = 2                               # 32 sequences per update (plan.py: fits with remat)
  c.sft.learning_rate = 1e-5
  c.sft.warmup_steps = 50
  c.sft.weight_decay = 0.0
  c.sft.log_every = 10

  c.dpo.steps = 300
  # dpo.batch_size: the default (16): pairs; chosen + rejected = 32 sequences
  c.dpo.learning_rate = 5e-7
  c.dpo.warmup_steps = 20
  c.dpo.max_len = 1024
  c.dpo.log_every = 10
  c.dpo.checkpoint_every = 50

  c.search.n_conditions = 512                        # training conditions (one tree each), chosen
  c.search.budget = 20                               # expansions per tree (GDP-Zero: 20), chosen
  c.search.max_depth = 5
  c.search.max_turns = 10
  c.search.selection = "puct"
  c.search.agent_sampling.max_new_tokens = 96
  c.search.simulator_sampling.temperature = 0.3
  c.search.simulator_sampling.max_new_tokens = 64
  c.search.max_prompt_len = 1024

  c.eval.n_conditions = 128                          # held-out conditions (64.06% = 82/128)
  c.eval.samples_per_condition = 1
  c.eval.max_agent_turns = 10
  c.eval.agent_sampling.max_new_tokens = 96
  c.eval.simulator_sampling.temperature = 0.3
  c.eval.simulator_sampling.max_new_tokens = 64
  c.eval.max_prompt_len = 1024

  return c
