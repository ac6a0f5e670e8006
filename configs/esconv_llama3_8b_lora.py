r"""ESConv with Llama 3 8B and LoRA adapters (agent and simulator) on ONE 80 GB GPU (H100 / H200).

Same task, data and search as configs/esconv_llama3_8b.py (which fully fine-tunes on a v5e-16
pod), but SFT and DPO train rank-16 LoRA adapters on all seven projections while the bf16 base
stays frozen; DPO's reference is the SFT agent with its (fresh) adapter switched off, so one copy
of the 8B weights is in memory. Check the plan on the host, then run:

  python launch/plan.py --config=configs/esconv_llama3_8b_lora.py --hbm_gib=80
  python launch/pipeline.py --config=configs/esconv_llama3_8b_lora.py --workdir=/data/esconv_llama3_8b_lora \
    --config.model.agent.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.model.simulator.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.tokenizer.path=/path/to/Meta-Llama-3-8B-Instruct \
    --config.data.path=/path/to/esconv

Per-device memory from that plan (the real LoRA train step lowered on abstract inputs; 41.9M fp32
adapter parameters; --compile=auto's fp32 cross-check agreed with the analytic activations, ratio
0.991): SFT step 32.3 GiB of 80 (frozen bf16 base 14.96, adapter 0.16, Adam 0.31, adapter grads
0.16, activations with remat 16.7 of which logits 11.7); sampling 39.1 GiB (KV cache 48 x 1120:
6.6). Without remat it would be 121 GiB: keep model.remat. On a TPU v5e-8 (16 GiB/chip):
`--config.mesh.fsdp=8 --config.dpo.batch_size=8 --config.dpo.grad_accum=4 --hbm_gib=16` plans
5.4 GiB per chip (training) and 5.9 GiB (sampling).
Export: `python launch/export.py ... --model=dpo_agent` writes the merged HF dir and a PEFT
adapter dir (`<out>/adapter`) for `peft.PeftModel.from_pretrained(base, dir)`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import base
import esconv_llama3_8b

# GiB per device from `launch/plan.py --config=configs/esconv_llama3_8b_lora.py --hbm_gib=80`.
PLAN = {"1xH100_80GB": {"train_remat": 32.264, "sampling": 39.145},
        "v5e-8 (fsdp=8)": {"train_remat": 5.367, "sampling": 5.872}}


def get_config():
  c = esconv_llama3_8b.get_config()
  c.name = "esconv_llama3_8b_lora"
  c.model.param_dtype = "bfloat16"                   # frozen base in bf16 (adapters are fp32)
  for role in ("agent", "simulator"):
    c.model[role].lora = base.lora_config(rank=16, alpha=32.0, targets="q,k,v,o,gate,up,down")

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1  # one GPU

  c.sft.batch_size = 8                               # local batch 8 × 1024 tokens
  c.sft.grad_accum = 4                               # 32 sequences per update (as the 8B full config)
  c.sft.learning_rate = 2e-4                         # LoRA learning rates are ~10-20x full FT's
  c.dpo.batch_size = 4                               # 4 pairs = 8 sequences per micro-batch
  c.dpo.grad_accum = 8                               # 32 pairs per update
  c.dpo.learning_rate = 5e-6
  return c
