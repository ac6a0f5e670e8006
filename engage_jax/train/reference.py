"""DPO's reference log-probs: computed once with the frozen reference model before training and
cached in `<workdir>/ref_logps_<split>.npz` under a key hashing the pairs files, the tokenisation
settings and the reference model (`cache_key`); a restart reuses them. With a LoRA policy the
reference may be the policy itself with its adapters off (the caller enters `lora.disabled`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from engage_jax import sharding as shd, multihost
from engage_jax.data import sft as sft_data
from engage_jax.train.config import DPOConfig
from engage_jax.train.dpo_loss import sequence_logps
from engage_jax.train.pair_data import PAIR_KEYS


def _fingerprint(model: nnx.Module) -> str:
  h = hashlib.sha256()
  cfg = getattr(model, "config", None)
  h.update(repr(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg).encode())
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    x = jnp.asarray(v[...], jnp.float32)
    stats = jax.device_get(jnp.stack([jnp.sum(x), jnp.sum(x * x), jnp.sum(x.ravel() * (jnp.arange(x.size) % 7))]))
    h.update(f"{path}{tuple(v.shape)}{np.asarray(stats, np.float64).round(6).tolist()}".encode())
  return h.hexdigest()


def cache_key(paths: Sequence[str], cfg: DPOConfig, ref_model: nnx.Module, tok) -> str:
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
  params = shd.put_tree(params, p_sh)

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
      fns[key] = jax.jit(fwd, in_shardings=(p_sh, {k: shd.batch_sharding(mesh, 2) for k in batch}))
    pc, pr = shd.to_host(fns[key](params, shd.place_batch(batch, mesh)))
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
  multihost.main_write(write, what=path)  # process 0 writes; every process computed the same values
  return chosen, rejected


def with_ref(buckets, chosen, rejected):
  """Buckets with `ref_chosen/ref_rejected [N]` (looked up by pair_index, which is dropped)."""
  out = {}
  for k, v in buckets.items():
    v = dict(v)
    v["ref_chosen"] = chosen[v["pair_index"]]
    v["ref_rejected"] = rejected[v["pair_index"]]
    del v["pair_index"]
    out[k] = v
  return out
