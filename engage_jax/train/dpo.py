"""Direct preference optimisation on stepwise pairs through the shared loop.

    model, summary = train_dpo(policy, ref, ["pairs/a.jsonl"], tok, cfg, workdir)
    model, summary = train_dpo(policy, ref, "exported_dataset_dir", tok, cfg, workdir)

The pieces: `train.pair_data` (pairs JSON-lines files or saved TRL-conversational datasets, both
through `datasets` → bucketed arrays), `train.reference` (the cached
reference log-probs), `train.dpo_loss` (the objective), `train.loop.run` (the steps). With a LoRA
policy and `ref_model=None` the reference is the policy itself with its adapters switched off
(`models.lora.disabled`): one copy of the weights; only the adapters are trained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from engage_jax import multihost
from engage_jax.data import sft as sft_data
from engage_jax.models import lora
from engage_jax.train import loop, heldout as heldout_lib
from engage_jax.train.config import DTYPES, DPOConfig
from engage_jax.train.dpo_loss import dpo_loss, dpo_loss_fn
from engage_jax.train.pair_data import (count_pair_tokens, read_pair_files, source_files, split_heldout, tokenize_pairs,
                                        tree_key, write_pairs)
from engage_jax.train.reference import cache_key, cached_ref_logps, with_ref
from engage_jax.train.sft import model_meta


def train_dpo(policy_model: nnx.Module, ref_model: nnx.Module | None, pairs_paths: str | Sequence[str], tokenizer,
              cfg: Any, workdir: str, mesh: Mesh | None = None, resume: bool = True,
              eval_pairs_paths: str | Sequence[str] | None = None, on_step=None
              ) -> tuple[nnx.Module, dict]:
  """DPO-trains `policy_model` in place against the frozen `ref_model`; returns (model, summary).
  ref_model None (a LoRA policy only): the reference is the policy with its adapters off, and
  only the adapters are trained.

  cfg fields used: beta, loss_type, label_smoothing, max_len, max_completion_len, min_bucket,
  batch_size (pairs per micro-batch), grad_accum, optimizer / schedule / logging fields
  (a `DPOConfig`, or a dict / ConfigDict of its fields). summary: {"pairs", "total_steps", "step",
  "last_train" (TRL-style metrics), "eval_start", "eval_end" (on eval pairs, or None), "ref_cache"}.
  cfg.heldout_fraction > 0 (and no eval_pairs_paths): whole trees' pairs are held out
  (`pair_data.split_heldout`; `<workdir>/pairs_train.jsonl`, `pairs_heldout.jsonl`), evaluated at
  the start and every epoch; summary["heldout"] = {"pairs", "train_pairs", "trees", "fraction",
  "curve"} (`train.heldout.curve`), also in `<workdir>/heldout_curve.json` / `.png`.
  """
  cfg = DPOConfig.from_any(cfg)
  dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), cfg.beta, cfg.loss_type,
           cfg.label_smoothing)  # validates the settings before any work
  paths = [pairs_paths] if isinstance(pairs_paths, (str, os.PathLike)) else list(pairs_paths)
  os.makedirs(workdir, exist_ok=True)
  dt = DTYPES[cfg.compute_dtype]
  adapter_off = ref_model is None
  if adapter_off and not lora.has_lora(policy_model):
    raise ValueError("train_dpo: ref_model=None (the adapter-off reference) needs a policy with LoRA adapters")
  ref = policy_model if adapter_off else ref_model

  def prepare(split, ps):
    pairs = read_pair_files(ps)
    buckets = tokenize_pairs(pairs, tokenizer, cfg.max_len, cfg.max_completion_len, cfg.min_bucket)
    path = os.path.join(workdir, f"ref_logps_{split}.npz")
    old = loop.set_compute_dtype(ref, dt)
    try:
      with (lora.disabled(ref) if adapter_off else contextlib.nullcontext()):
        key = cache_key(source_files(ps), cfg, ref, tokenizer) + ("/adapter_off" if adapter_off else "")
        ch, rj = cached_ref_logps(path, key, ref, buckets, cfg.batch_size, mesh)
    finally:
      loop.restore_compute_dtype(ref, old)
    return pairs, with_ref(buckets, ch, rj), path

  heldout = None
  if cfg.heldout_fraction > 0 and not eval_pairs_paths:  # whole trees held out, evaluated every epoch
    everything = read_pair_files(paths)
    train_idx, held_idx = split_heldout(everything, cfg.heldout_fraction)
    if held_idx:
      paths = [os.path.join(workdir, "pairs_train.jsonl")]
      eval_pairs_paths = [os.path.join(workdir, "pairs_heldout.jsonl")]
      multihost.main_write(write_pairs, paths[0], [everything[i] for i in train_idx], what=paths[0])
      multihost.main_write(write_pairs, eval_pairs_paths[0], [everything[i] for i in held_idx], what=eval_pairs_paths[0])
      heldout = {"pairs": len(held_idx), "train_pairs": len(train_idx), "fraction": cfg.heldout_fraction,
                 "trees": len({tree_key(everything[i]) for i in held_idx})}
  pairs, train_buckets, ref_path = prepare("train", paths)
  eval_fn = None
  if eval_pairs_paths:
    eps = [eval_pairs_paths] if isinstance(eval_pairs_paths, (str, os.PathLike)) else list(eval_pairs_paths)
    _, eval_buckets, _ = prepare("eval", eps)
    eval_fn = lambda: sft_data.BatchIterator(eval_buckets, cfg.batch_size, num_epochs=1)
  micro = cfg.batch_size * cfg.grad_accum
  steps_per_epoch = sft_data.BatchIterator(train_buckets, micro).steps_per_epoch
  total = loop.total_steps_for(cfg, steps_per_epoch * cfg.grad_accum)
  if heldout is not None and not cfg.eval_every:
    cfg = dataclasses.replace(cfg, eval_every=steps_per_epoch)   # one held-out point per epoch

  def make_batches(state):
    return sft_data.BatchIterator(train_buckets, micro, seed=cfg.seed, **(state or {}))

  old = loop.set_compute_dtype(policy_model, dt)
  try:
    graphdef, params, frozen, rest = lora.split_trainable(policy_model)
    out = loop.run(dpo_loss_fn(graphdef, rest, cfg.beta, cfg.loss_type, cfg.label_smoothing, cfg.rpo_alpha), params,
                   make_batches, cfg, workdir, mesh=mesh, total_steps=total, eval_batches=eval_fn,
                   resume=resume, checkpoint_meta=model_meta(policy_model), on_step=on_step,
                   count_tokens=count_pair_tokens, frozen=frozen)
  finally:
    loop.restore_compute_dtype(policy_model, old)
  nnx.update(policy_model, out.params)
  summary = dict(out.summary, pairs=len(pairs), total_steps=total, ref_cache=ref_path)
  if heldout is not None:
    points = heldout_lib.curve(workdir, steps_per_epoch)
    summary["heldout"] = dict(heldout, curve=points)
    multihost.main_write(heldout_lib.write_curve, workdir, points, dict(heldout, updates_per_epoch=steps_per_epoch),
                         what="heldout_curve.json")
  return policy_model, summary
