r"""PersuasionForGood with Qwen2 7B (persuader agent and persuadee simulator) on a TPU v5e-16.

Set the checkpoint / data placeholders, check the memory plan on the host, then run:

  python launch/plan.py --config=configs/p4g_qwen2_7b.py
  python launch/pipeline.py --config=configs/p4g_qwen2_7b.py --workdir=gs://BUCKET/p4g_qwen2_7b \
    --config.model.agent.path=/path/to/Qwen2-7B-Instruct \
    --config.model.simulator.path=/path/to/Qwen2-7B-Instruct \
    --config.tokenizer.path=/path/to/Qwen2-7B-Instruct \
    --config.data.path=/path/to/p4g

On a pod slice use launch/tpu_vm.sh. For 8×H100 use `--config.mesh.fsdp=8`. The architecture fields
are Qwen2 7B's (q/k/v bias is implied by model_type qwen2); with a real checkpoint they are read
from its config.json. Paper reference (arXiv 2506.21497): mean donation $0.58 (SFT) → $1.29 (DPO).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import base  # noqa: E402  (configs/base.py: the shared schema)

QWEN2_7B_PATH = "/path/to/Qwen2-7B-Instruct"          # placeholder: set --config.model.*.path


def qwen2_7b(path: str = QWEN2_7B_PATH):
  """Qwen2 7B: vocab 152064, d 3584, 28 layers, 28 heads, 4 KV heads, FFN 18944, untied, qkv bias."""
  return base.model_config(
      path=path, model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
      tie_word_embeddings=False, rope_theta=1000000.0)


def get_config():
  c = base.get_config()
  c.name = "p4g_qwen2_7b"
  c.task = "p4g"
  c.seed = 0

  c.data.source = "p4g"
  c.data.path = "/path/to/p4g"                       # placeholder: dir with full_dialog.csv, full_info.csv
  c.data.max_len = 1024
  c.data.max_train_dialogues = 0

  c.tokenizer.path = QWEN2_7B_PATH                   # placeholder: the checkpoint's tokenizer
  c.tokenizer.vocab_size = 152064                    # used by plan.py without a checkpoint

  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"                    # fp32 master weights (AdamW); see plan.py
  c.model.agent = qwen2_7b()
  c.model.simulator = qwen2_7b()

  # TPU v5e-16: 16 chips × 16 GiB HBM. 8×H100 (80 GB): data=1, fsdp=8, tensor=1.
  c.mesh.data = 1
  c.mesh.fsdp = 16
  c.mesh.tensor = 1

  c.sft.agent_steps = 1000
  c.sft.simulator_steps = 1000
  c.sft.batch_size = 16                              # local batch 1 on fsdp=16
  c.sft.grad_accum = 2                               # 32 sequences per update (plan.py: fits with remat)
  c.sft.learning_rate = 1e-5
  c.sft.warmup_steps = 50
  c.sft.weight_decay = 0.0
  c.sft.log_every = 10
  c.sft.eval_every = 200
  c.sft.checkpoint_every = 200

  c.dpo.beta = 0.1
  c.dpo.loss_type = "sigmoid"
  c.dpo.steps = 300
  c.dpo.batch_size = 16
  c.dpo.learning_rate = 5e-7
  c.dpo.warmup_steps = 20
  c.dpo.max_len = 1024
  c.dpo.log_every = 10
  c.dpo.checkpoint_every = 50

  c.search.n_conditions = 512                        # chosen
  c.search.trees_per_shard = 16
  c.search.k = 3
  c.search.budget = 20                               # GDP-Zero: 20 simulations, chosen
  c.search.max_depth = 5
  c.search.max_turns = 15                            # GDP-Zero's 15-turn cap
  c.search.selection = "puct"
  c.search.c = 1.0
  c.search.margin = 0.1                              # dollars
  c.search.temperature = 0.9
  c.search.top_p = 0.9
  c.search.max_new_tokens = 96
  c.search.sim_temperature = 0.3
  c.search.sim_max_new_tokens = 64
  c.search.max_prompt_len = 1024

  c.eval.n_conditions = 128
  c.eval.samples_per_condition = 1
  c.eval.max_agent_turns = 15
  c.eval.temperature = 0.7
  c.eval.top_p = 0.9
  c.eval.max_new_tokens = 96
  c.eval.sim_temperature = 0.3
  c.eval.sim_max_new_tokens = 64
  c.eval.max_prompt_len = 1024

  c.reward.donation_cap = 2.0
  return c
