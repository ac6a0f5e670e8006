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
import base
import esconv_llama3_8b

QWEN2_7B_PATH = "/path/to/Qwen2-7B-Instruct"          # placeholder: set --config.model.*.path


def qwen2_7b(path: str = QWEN2_7B_PATH):
  """Qwen2 7B: vocab 152064, d 3584, 28 layers, 28 heads, 4 KV heads, FFN 18944, untied, qkv bias."""
  return base.model_config(
      path=path, model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
      tie_word_embeddings=False, rope_theta=1000000.0)


def get_config():
  """esconv_llama3_8b's settings (mesh, training, search, eval) with the P4G task and Qwen2 7B."""
  c = esconv_llama3_8b.get_config()
  c.name = "p4g_qwen2_7b"
  c.task = "p4g"

  c.data.source = "p4g"
  c.data.path = "/path/to/p4g"                       # placeholder: dir with full_dialog.csv, full_info.csv

  c.tokenizer.path = QWEN2_7B_PATH                   # placeholder: the checkpoint's tokenizer
  c.tokenizer.vocab_size = 152064                    # used by plan.py without a checkpoint
  c.model.agent = qwen2_7b()
  c.model.simulator = qwen2_7b()

  c.search.max_turns = 15                            # GDP-Zero's 15-turn cap
  c.search.margin = 0.1                              # dollars
  c.eval.max_agent_turns = 15
  return c
