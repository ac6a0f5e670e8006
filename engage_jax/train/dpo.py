"""Direct preference optimisation on stepwise pairs (pairs JSONL, TRL's conversational format).

    model, summary = train_dpo(policy, ref, ["pairs/a.jsonl"], tok, cfg, workdir)

Pair tokenisation: prompt = `tok.apply_chat(prompt, add_generation_prompt=True)`; completion =
the assistant message's tokens + the end-of-turn token (taken from the rendered chat, so it is
exactly what the template produces). Completions are cut to `max_completion_len` (default
max_len // 2) and the prompt is left-truncated so prompt + longest completion <= max_len.

Layout per pair: prompt left-padded to P, completions right-padded to C (bucketed, powers of two
from `min_bucket`); arrays `prompt_ids/prompt_mask [N, P]`, `chosen_ids/chosen_mask,
rejected_ids/rejected_mask [N, C]`, `ref_chosen/ref_rejected [N]`. One forward over the
concatenation `[2B, P + C]` (chosen rows, then rejected rows) gives both sequence log-probs; the
LM head runs only on the C positions that predict completion tokens.

Reference log-probs are computed once with the frozen reference model before training and
cached in `<workdir>/ref_logps_<split>.npz` under a key hashing the pairs files, the tokenisation
settings and the reference model; a restart reuses them. With a LoRA policy and
`ref_model=None` the reference is the policy itself with its adapters switched off
(`models.lora.disabled`): one copy of the weights; only the adapters are trained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from engage_jax import buckets as buckets_lib
from engage_jax import sharding as shd
from engage_jax.data import sft as sft_data
from engage_jax.models import lora
from engage_jax.train import loop

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
PAIR_KEYS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


# ---------------------------------------------------------------------------- the loss
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
  """DPO losses per pair. All inputs [B] (sequence log-probs; for IPO pass length-averaged ones).

  Δ = (π_c - π_r) - (ref_c - ref_r), ε = label_smoothing:
    sigmoid: -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)            (conservative DPO when ε > 0)
    robust:  ((1-ε)·(-logσ(βΔ)) + ε·logσ(-βΔ)) / (1-2ε)
    hinge:   relu(1 - βΔ)
    ipo:     (Δ - 1/(2β))²
  Returns (losses [B], chosen_rewards [B], rejected_rewards [B]) with rewards β·(π - ref)
  (no gradient through the rewards).
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if not 0.0 <= label_smoothing <= 0.5 or (loss_type == "robust" and label_smoothing >= 0.5):
    raise ValueError(f"label_smoothing must be in [0, 0.5) (robust) / [0, 0.5], got {label_smoothing}")
  if beta <= 0:
    raise ValueError(f"beta must be positive, got {beta}")
  pc, pr = jnp.asarray(policy_chosen_logps), jnp.asarray(policy_rejected_logps)
  rc, rr = jnp.asarray(ref_chosen_logps), jnp.asarray(ref_rejected_logps)
  logits = (pc - pr) - (rc - rr)
  eps = label_smoothing
  if loss_type == "sigmoid":
    losses = -jax.nn.log_sigmoid(beta * logits) * (1 - eps) - jax.nn.log_sigmoid(-beta * logits) * eps
  elif loss_type == "robust":
    losses = (-jax.nn.log_sigmoid(beta * logits) * (1 - eps)
              + jax.nn.log_sigmoid(-beta * logits) * eps) / (1 - 2 * eps)
  elif loss_type == "hinge":
    losses = jax.nn.relu(1 - beta * logits)
  else:
    losses = (logits - 1 / (2 * beta)) ** 2
  chosen_rewards = beta * jax.lax.stop_gradient(pc - rc)
  rejected_rewards = beta * jax.lax.stop_gradient(pr - rr)
  return losses, chosen_rewards, rejected_rewards


# ---------------------------------------------------------------------------- pairs files
def _check_messages(obj, field, where, single_assistant=False):
  if not isinstance(obj, list) or not obj:
    raise ValueError(f"{where}: {field!r} must be a non-empty list of messages")
  for m in obj:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
      raise ValueError(f"{where}: {field!r} messages need string 'role' and 'content', got {m!r:.80}")
  if single_assistant and (len(obj) != 1 or obj[0]["role"] != "assistant"):
    raise ValueError(f"{where}: {field!r} must hold exactly one assistant message")


def load_pairs(paths: str | Sequence[str]) -> list[dict]:
  """All pairs of the JSONL files, in order. ValueError naming file and line on bad input."""
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not paths:
    raise ValueError("no pairs files given")
  out = []
  for path in paths:
    n = 0
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{lineno}"
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
          raise ValueError(f"{where}: expected a JSON object with prompt/chosen/rejected")
        for key in ("prompt", "chosen", "rejected"):
          if key not in rec:
            raise ValueError(f"{where}: missing field {key!r}")
        _check_messages(rec["prompt"], "prompt", where)
        _check_messages(rec["chosen"], "chosen", where, single_assistant=True)
        _check_messages(rec["rejected"], "rejected", where, single_assistant=True)
        out.append(rec)
        n += 1
    if n == 0:
      raise ValueError(f"{path}: no pairs (empty file)")
  return out


def _completion(full: list[int], gen: list[int], content_ids: list[int], eot: int) -> list[int]:
  if full[:len(gen)] == gen:
    comp = full[len(gen):]
    if eot in comp:
      return comp[:comp.index(eot) + 1]
    return comp + [eot]
  return content_ids + [eot]


def tokenize_pairs(pairs: Sequence[dict], tok, max_len: int, max_completion_len: int = 0,
                   min_bucket: int = 16) -> dict[tuple[int, int], dict[str, np.ndarray]]:
  """Bucketed pair arrays {(P, C): {PAIR_KEYS..., "pair_index" [N]}} (see module docstring)."""
  cmax = max_completion_len or max_len // 2
  if cmax >= max_len:
    raise ValueError(f"max_completion_len {cmax} must be < max_len {max_len}")
  eot = tok.end_of_turn_id
  texts = []
  for p in pairs:
    texts.append(tok.render_chat(p["prompt"], add_generation_prompt=True))
    texts.append(tok.render_chat(p["prompt"] + p["chosen"]))
    texts.append(tok.render_chat(p["prompt"] + p["rejected"]))
    texts.append(p["chosen"][0]["content"])
    texts.append(p["rejected"][0]["content"])
  enc = tok.encode_batch(texts)
  rows = []
  for i in range(len(pairs)):
    gen, fc, fr, cc, cr = enc[5 * i:5 * i + 5]
    c = _completion(fc, gen, cc, eot)[:cmax]
    r = _completion(fr, gen, cr, eot)[:cmax]
    prompt = gen[-(max_len - max(len(c), len(r))):]
    rows.append((prompt, c, r))
  p_buckets = buckets_lib.ladder(max_len, min_bucket)
  c_buckets = buckets_lib.ladder(cmax, min_bucket)
  groups: dict[tuple[int, int], list[int]] = {}
  for i, (p, c, r) in enumerate(rows):
    key = (buckets_lib.fit(len(p), p_buckets), buckets_lib.fit(max(len(c), len(r)), c_buckets))
    groups.setdefault(key, []).append(i)
  pad = tok.pad_id
  out = {}
  for (pl, cl), idx in sorted(groups.items()):
    n = len(idx)
    a = {"prompt_ids": np.full((n, pl), pad, np.int32), "prompt_mask": np.zeros((n, pl), np.int32),
         "chosen_ids": np.full((n, cl), pad, np.int32), "chosen_mask": np.zeros((n, cl), np.int32),
         "rejected_ids": np.full((n, cl), pad, np.int32), "rejected_mask": np.zeros((n, cl), np.int32),
         "pair_index": np.asarray(idx, np.int32)}
    for j, i in enumerate(idx):
      p, c, r = rows[i]
      a["prompt_ids"][j, pl - len(p):] = p
      a["prompt_mask"][j, pl - len(p):] = 1
      a["chosen_ids"][j, :len(c)] = c
      a["chosen_mask"][j, :len(c)] = 1
      a["rejected_ids"][j, :len(r)] = r
      a["rejected_mask"][j, :len(r)] = 1
    out[(pl, cl)] = a
  return out


# ---------------------------------------------------------------------------- log-probs
def sequence_logps(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
  """One forward over [2B, P + C]. Returns (chosen_logps [B], rejected_logps [B],
  chosen_tokens [B], rejected_tokens [B]); log-probs are fp32 sums over completion tokens."""
  pid, pm = batch["prompt_ids"], batch["prompt_mask"]
  b, p = pid.shape
  ids = jnp.concatenate([jnp.concatenate([pid, batch["chosen_ids"]], 1),
                         jnp.concatenate([pid, batch["rejected_ids"]], 1)], 0)
  cmask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
  att = jnp.concatenate([jnp.concatenate([pm, pm], 0), cmask], 1)
  hidden = model.hidden_states(ids, att)                         # [2B, P+C, D]
  logits = model.logits(hidden[:, p - 1:-1])                     # [2B, C, V] fp32
  lp = loop.token_logps(logits, ids[:, p:]) * cmask               # [2B, C]
  seq = jnp.sum(lp, axis=-1)
  cnt = jnp.sum(cmask, axis=-1).astype(jnp.float32)
  return seq[:b], seq[b:], cnt[:b], cnt[b:]


def dpo_loss_fn(graphdef, rest, beta: float, loss_type: str, label_smoothing: float, rpo_alpha: float = 0.0):
  """loss_fn(params, batch) for the loop: weighted mean DPO loss + TRL-style metrics.

  rpo_alpha > 0 adds TRL's RPO term: rpo_alpha × the chosen completions' mean per-token NLL, which
  keeps the chosen likelihood from collapsing while the margin grows (metric "nll_loss")."""

  def loss_fn(params, batch, frozen=None):
    model = loop.merge_model(graphdef, params, rest, frozen)
    pc, pr, nc, nr = sequence_logps(model, batch)
    nll = -pc / jnp.maximum(nc, 1.0)
    rc, rr = batch["ref_chosen"], batch["ref_rejected"]
    if loss_type == "ipo":  # TRL averages log-probs over completion tokens for IPO
      pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing)
    w = batch["row_weight"]
    mean = lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {"rewards/chosen": mean(cr), "rewards/rejected": mean(rj),
               "rewards/accuracies": mean((cr > rj).astype(jnp.float32)),
               "rewards/margins": mean(cr - rj), "logps/chosen": mean(pc), "logps/rejected": mean(pr),
               "nll_loss": mean(nll)}
    return mean(losses) + rpo_alpha * mean(nll), metrics

  return loss_fn


def _fingerprint(model: nnx.Module) -> str:
  h = hashlib.sha256()
  cfg = getattr(model, "config", None)
  h.update(repr(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg).encode())
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    x = jnp.asarray(v[...], jnp.float32)
    stats = jax.device_get(jnp.stack([jnp.sum(x), jnp.sum(x * x), jnp.sum(x.ravel() * (jnp.arange(x.size) % 7))]))
    h.update(f"{path}{tuple(v.shape)}{np.asarray(stats, np.float64).round(6).tolist()}".encode())
  return h.hexdigest()


def cache_key(paths: Sequence[str], cfg: loop.TrainConfig, ref_model: nnx.Module, tok) -> str:
  """Hash of the pairs files' bytes, tokenisation settings and the reference model."""
  h = hashlib.sha256()
  for p in paths:
    with open(p, "rb") as f:
      h.update(hashlib.sha256(f.read()).digest())
  h.update(f"{cfg.max_len}/{cfg.max_completion_len}/{cfg.min_bucket}/{tok.vocab_size}/"
           f"{tok.end_of_turn_id}/{cfg.compute_dtype}".encode())
  h.update(_fingerprint(ref_model).encode())
  return h.hexdigest()


def compute_ref_logps(ref_model: nnx.Module, buckets, batch_size: int, mesh: Mesh | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Sequence log-probs (sums) of every pair under `ref_model`: (chosen [N], rejected [N])."""
  mesh = mesh if mesh is not None else shd.make_mesh(data=1, devices=jax.devices()[:1])
  n = int(sum(len(v["pair_index"]) for v in buckets.values()))
  graphdef, params, rest = nnx.split(ref_model, nnx.Param, ...)
  p_sh = shd.state_sharding(mesh, params)
  params = loop.place(params, p_sh)

  def fwd(params, batch):
    pc, pr, _, _ = sequence_logps(nnx.merge(graphdef, params, rest), batch)
    return pc, pr

  fns = {}
  chosen, rejected = np.zeros((n,), np.float32), np.zeros((n,), np.float32)
  data = {k: {kk: vv for kk, vv in v.items()} for k, v in buckets.items()}
  for batch in sft_data.BatchIterator(data, batch_size, num_epochs=1):
    idx, w = batch.pop("pair_index"), batch.pop("row_weight")
    batch = {k: batch[k] for k in PAIR_KEYS}
    key = tuple(batch["prompt_ids"].shape) + tuple(batch["chosen_ids"].shape)
    if key not in fns:
      b_sh = {k: loop.micro_batch_sharding(mesh, 2, accum=False) for k in batch}
      fns[key] = jax.jit(fwd, in_shardings=(p_sh, b_sh))
    b_sh = {k: loop.micro_batch_sharding(mesh, 2, accum=False) for k in batch}
    pc, pr = shd.to_host(fns[key](params, shd.place_batch(batch, b_sh)))
    real = w > 0
    chosen[idx[real]], rejected[idx[real]] = pc[real], pr[real]
  return chosen, rejected


def cached_ref_logps(path: str, key: str, ref_model, buckets, batch_size, mesh):
  """Loads `path` if it holds `key`, else computes and writes it (atomically)."""
  if os.path.exists(path):
    with np.load(path) as z:
      if str(z["key"]) == key:
        return z["chosen"], z["rejected"]
  chosen, rejected = compute_ref_logps(ref_model, buckets, batch_size, mesh)

  def write():
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.asarray(key), chosen=chosen, rejected=rejected)
    os.replace(tmp, path)
  from engage_jax import multihost
  multihost.main_write(write, what=path)  # process 0 writes; every process computed the same values
  return chosen, rejected


def _with_ref(buckets, chosen, rejected):
  out = {}
  for k, v in buckets.items():
    v = dict(v)
    v["ref_chosen"] = chosen[v["pair_index"]]
    v["ref_rejected"] = rejected[v["pair_index"]]
    del v["pair_index"]
    out[k] = v
  return out


def _count_tokens(batch) -> float:
  return float(2 * np.sum(batch["prompt_mask"]) + np.sum(batch["chosen_mask"]) + np.sum(batch["rejected_mask"]))


# ---------------------------------------------------------------------------- train
def train_dpo(policy_model: nnx.Module, ref_model: nnx.Module | None, pairs_paths: str | Sequence[str], tokenizer,
              cfg: Any, workdir: str, mesh: Mesh | None = None, resume: bool = True,
              eval_pairs_paths: str | Sequence[str] | None = None, on_step=None
              ) -> tuple[nnx.Module, dict]:
  """DPO-trains `policy_model` in place against the frozen `ref_model`; returns (model, summary).
  ref_model None (a LoRA policy only): the reference is the policy with its adapters off, and
  only the adapters are trained.

  cfg fields used: beta, loss_type, label_smoothing, max_len, max_completion_len, min_bucket,
  batch_size (pairs per micro-batch), grad_accum_steps, optimizer / schedule / logging fields
  (see `loop.TrainConfig`). summary: {"pairs", "total_steps", "step", "last_train" (TRL-style
  metrics), "eval_start", "eval_end" (on eval pairs, or None), "ref_cache"}.
  """
  cfg = loop.TrainConfig.from_any(cfg)
  dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), cfg.beta, cfg.loss_type,
           cfg.label_smoothing)  # validates the settings before any work
  paths = [pairs_paths] if isinstance(pairs_paths, (str, os.PathLike)) else list(pairs_paths)
  os.makedirs(workdir, exist_ok=True)
  dt = loop.DTYPES[cfg.compute_dtype]
  adapter_off = ref_model is None
  if adapter_off and not lora.has_lora(policy_model):
    raise ValueError("train_dpo: ref_model=None (the adapter-off reference) needs a policy with LoRA adapters")
  ref = policy_model if adapter_off else ref_model

  def prepare(split, ps):
    pairs = load_pairs(ps)
    buckets = tokenize_pairs(pairs, tokenizer, cfg.max_len, cfg.max_completion_len, cfg.min_bucket)
    path = os.path.join(workdir, f"ref_logps_{split}.npz")
    old = loop.set_compute_dtype(ref, dt)
    try:
      with (lora.disabled(ref) if adapter_off else contextlib.nullcontext()):
        key = cache_key(ps, cfg, ref, tokenizer) + ("/adapter_off" if adapter_off else "")
        ch, rj = cached_ref_logps(path, key, ref, buckets, cfg.batch_size, mesh)
    finally:
      loop.restore_compute_dtype(ref, old)
    return pairs, _with_ref(buckets, ch, rj), path

  pairs, train_buckets, ref_path = prepare("train", paths)
  eval_fn = None
  if eval_pairs_paths:
    eps = [eval_pairs_paths] if isinstance(eval_pairs_paths, (str, os.PathLike)) else list(eval_pairs_paths)
    _, eval_buckets, _ = prepare("eval", eps)
    eval_fn = lambda: sft_data.BatchIterator(eval_buckets, cfg.batch_size, num_epochs=1)
  micro = cfg.batch_size * cfg.grad_accum_steps
  steps_per_epoch = sft_data.BatchIterator(train_buckets, micro).steps_per_epoch
  total = loop.total_steps_for(cfg, steps_per_epoch * cfg.grad_accum_steps)

  def make_batches(state):
    return sft_data.BatchIterator(train_buckets, micro, seed=cfg.seed, **(state or {}))

  from engage_jax.train.sft import model_meta
  old = loop.set_compute_dtype(policy_model, dt)
  try:
    graphdef, params, frozen, rest = lora.split_trainable(policy_model)
    out = loop.run(dpo_loss_fn(graphdef, rest, cfg.beta, cfg.loss_type, cfg.label_smoothing, cfg.rpo_alpha), params,
                   make_batches, cfg, workdir, mesh=mesh, total_steps=total, eval_batches=eval_fn,
                   resume=resume, checkpoint_meta=model_meta(policy_model), on_step=on_step,
                   count_tokens=_count_tokens, frozen=frozen)
  finally:
    loop.restore_compute_dtype(policy_model, old)
  nnx.update(policy_model, out.params)
  summary = dict(out.summary, pairs=len(pairs), total_steps=total, ref_cache=ref_path)
  return policy_model, summary
