"""Supervised fine-tuning: loss-masked next-token cross-entropy through the shared loop.

    buckets, stats = data.sft.build_arrays(dialogues, tok, "agent", max_len=256)
    model, summary = train_sft(model, buckets, cfg, workdir, eval_data=held_out_buckets)

train_data / eval_data: bucketed arrays `{T: {"input_ids", "loss_mask", "attention_mask"}
[N_T, T]}` (as `data.sft.build_arrays` / `pad_to_buckets` return) or a list of `data.sft.Example`.
Batches come from `data.sft.BatchIterator` (seeded, resumable; its position is checkpointed).
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from engage_jax.data import sft as sft_data
from engage_jax.models import lora
from engage_jax.train import loop
from engage_jax.train.config import DTYPES, TrainConfig


def as_buckets(data: Any, cfg: TrainConfig, pad_id: int = 0) -> dict[int, dict[str, np.ndarray]]:
  """Bucketed arrays from buckets (returned as is) or a list of Examples (padded)."""
  if isinstance(data, Mapping):
    return {int(k): v for k, v in data.items()}
  if isinstance(data, Sequence) and (not data or isinstance(data[0], sft_data.Example)):
    if not data:
      raise ValueError("train_sft: no examples")
    buckets = sft_data.default_buckets(cfg.max_len, cfg.min_bucket)
    return sft_data.pad_to_buckets(data, pad_id, max(cfg.max_len, max(len(e.input_ids) for e in data)),
                                   buckets)
  raise ValueError(f"SFT data must be bucketed arrays {{T: {{input_ids, ...}}}} or a list of "
                   f"data.sft.Example, got {type(data).__name__}")


def eval_batch_iter(buckets: Mapping[int, Mapping[str, np.ndarray]], batch_size: int):
  """Every example once in fixed-shape batches (last one padded with loss_mask 0)."""
  def gen():
    it = sft_data.BatchIterator(buckets, batch_size, seed=0, num_epochs=1)
    yield from it
  return gen


def model_meta(model: nnx.Module) -> dict:
  """Checkpoint metadata: the model config, and the LoRA config of an adapter run (whose
  checkpoints hold the adapter only)."""
  cfg = getattr(model, "config", None)
  out = {"model_config": dataclasses.asdict(cfg)} if dataclasses.is_dataclass(cfg) else {}
  if lora.has_lora(model):
    out["lora"] = model.lora_config.to_json()
  return out


def train_sft(model: nnx.Module, train_data: Any, cfg: Any, workdir: str, mesh: Mesh | None = None,
              eval_data: Any = None, resume: bool = True, on_step=None) -> tuple[nnx.Module, dict]:
  """Fine-tunes `model` in place on SFT examples; returns (model, summary). A model with LoRA
  adapters (models.lora.apply_lora) trains the adapters only; the base weights stay frozen.

  summary: {"step", "start_step", "total_steps", "last_train": metrics, "eval_start" / "eval_end":
  held-out metrics ({"loss"} token-weighted) or None, "examples", "target_tokens"}. Checkpoints go
  to `<workdir>/checkpoints` (resumed when `resume`), metrics to `<workdir>/metrics.jsonl`.
  """
  cfg = TrainConfig.from_any(cfg)
  pad_id = getattr(model.config, "pad_token_id", None) or 0
  buckets = as_buckets(train_data, cfg, pad_id)
  micro = cfg.batch_size * cfg.grad_accum
  steps_per_epoch = sft_data.BatchIterator(buckets, micro).steps_per_epoch
  total = loop.total_steps_for(cfg, steps_per_epoch * cfg.grad_accum)

  def make_batches(state):
    return sft_data.BatchIterator(buckets, micro, seed=cfg.seed, **(state or {}))

  eval_fn = None
  if eval_data is not None:
    eval_fn = eval_batch_iter(as_buckets(eval_data, cfg, pad_id), cfg.batch_size)
  old = loop.set_compute_dtype(model, DTYPES[cfg.compute_dtype])
  try:
    graphdef, params, frozen, rest = lora.split_trainable(model)
    out = loop.run(loop.lm_loss_fn(graphdef, rest), params, make_batches, cfg, workdir, mesh=mesh,
                   total_steps=total, eval_batches=eval_fn, resume=resume,
                   checkpoint_meta=model_meta(model), on_step=on_step, frozen=frozen)
  finally:
    loop.restore_compute_dtype(model, old)
  nnx.update(model, out.params)
  summary = dict(out.summary, total_steps=total,
                 examples=int(sum(len(v["input_ids"]) for v in buckets.values())),
                 target_tokens=int(sum(v["loss_mask"].sum() for v in buckets.values())))
  return model, summary
