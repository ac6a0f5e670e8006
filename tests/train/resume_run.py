"""Subprocess for the kill-and-resume test: `python resume_run.py WORKDIR [--pause-at N]`.

Trains a tiny model on fixed synthetic SFT arrays (10 steps, checkpoint every 3, metrics every
step). With --pause-at N it prints "PAUSED <N>" after step N and sleeps (the test SIGKILLs it).
At the end it writes WORKDIR/final_params.npz.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from engage_jax.checkpoint import flatten_params
from engage_jax.models import CausalLM, ModelConfig
from engage_jax.train.sft import train_sft


def data():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 48, (40, 24)).astype(np.int32)
  ids[:, 1::2] = (ids[:, 0::2] * 3) % 48  # a learnable pattern
  mask = np.ones_like(ids)
  mask[:, :4] = 0
  return {24: {"input_ids": ids, "loss_mask": mask, "attention_mask": np.ones_like(ids)}}


def main() -> int:
  workdir = sys.argv[1]
  pause_at = int(sys.argv[sys.argv.index("--pause-at") + 1]) if "--pause-at" in sys.argv else -1
  cfg = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
  model = CausalLM(cfg, rngs=nnx.Rngs(0))

  def on_step(step, metrics):
    if step == pause_at:
      print(f"PAUSED {step}", flush=True)
      time.sleep(600)

  train_cfg = dict(steps=10, batch_size=4, grad_accum=2, learning_rate=1e-2, warmup_steps=2,
                   checkpoint_every=3, log_every=1, progress=False, eval_at_start=False)
  model, _ = train_sft(model, data(), train_cfg, workdir, on_step=on_step)
  np.savez(os.path.join(workdir, "final_params.npz"),
           **{k: np.asarray(v) for k, v in flatten_params(nnx.state(model, nnx.Param)).items()})
  print("DONE", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
