"""A conversation KV cache: a chat's next turn prefills only the tokens its cache does not hold.

    store = ConversationCache()
    new_ids = store.generate(model, prompts, seed=0, max_new_tokens=64, temperature=0.0, ...)

`generate` has `sampling.generate`'s arguments and result. The store keeps the KV cache of its
last call (every row's prompt and the new tokens fed to the model) with the token ids each row
holds. A new prompt takes the row whose ids share the longest prefix with it (content-addressed,
so no chat ids: the agent's next turn finds its last turn, a search child its parent's
expansion), keeps that prefix's keys/values and prefills only the rest. A prompt that shares
nothing (a new chat, or one that `rollout.Speaker.prompt` had to truncate) gets a fresh prefill
in the same batch; when no prompt of a call shares anything the call is exactly
`sampling.generate`'s prefill. Reuse is exact: the kept slots hold the same token ids at the same
positions as a full prefill would, so only fp32 rounding differs.

Layout of one call (B rows, all shapes bucketed like `sampling.generate`'s):

    slots [0, C)          kept prefix, row b holds kept[b] tokens at [0, kept[b])  (C may be 0)
    slots [C, C + Pn)     the new prompt tokens, left-padded (row b: the last new[b] slots)
    slots [C + Pn, S)     the generated tokens, S = C + Pn + N

The kept region is gathered from the stored cache (`gather_kept`, per row a source row and a
list of source slots); the new tokens run as one chunk in the cached forward ("decode" mode:
each new token attends to the kept slots and the new tokens before it); then
`sampling.decode_loop` samples exactly as `sampling.generate` does, with the same PRNG key
sequence and batch bucket, so the same seed draws the same noise per row. The result cache is
stored for the next call (the previous one is released).
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from engage_jax import sampling
from engage_jax.buckets import bucket
from engage_jax.models.llama import KVCache
from engage_jax.sampling import SamplingParams

MIN_KEPT_BUCKET = 16


@struct.dataclass
class KeptCache:
  """The kept prefixes of one call's rows, compacted to the left.

  cache: `KVCache(keys [L, U, KV, hd, C], values [L, U, KV, C, hd])`; row u holds its prefix at
  slots [0, length[u]). length: [U] int32.
  """
  cache: KVCache
  length: jax.Array


@dataclasses.dataclass
class RowIndex:
  """Host bookkeeping of one stored row: `ids[j]` (int32 [L]) is the token whose keys/values are
  at slot `slots[j]` (int32 [L]) of the stored cache's row `row`; ids are in position order
  (position j)."""
  row: int
  ids: np.ndarray
  slots: np.ndarray


@dataclasses.dataclass
class CallStats:
  """Token counts of one `generate` call (valid rows only): prompt tokens, how many were kept
  from the store, how many were prefilled."""
  prompt_tokens: int
  kept_tokens: int
  prefilled_tokens: int


def longest_prefix(stored: np.ndarray, prompt: np.ndarray) -> np.ndarray:
  """stored int32 [R, L] (rows padded with -1), prompt int32 [T] → the length of each row's common
  prefix with `prompt`: int32 [R]."""
  m = min(stored.shape[1], len(prompt))
  if m == 0:
    return np.zeros((stored.shape[0],), np.int32)
  same = stored[:, :m] == prompt[None, :m]
  return np.logical_and.accumulate(same, axis=1).sum(axis=1).astype(np.int32)


def _gather_kept(stored: KVCache, rows: jax.Array, slots: jax.Array, length: jax.Array) -> KeptCache:
  """stored: `KVCache` [L, R, KV, .., S']; rows [U] int32; slots [U, C] int32 (source slots of
  each kept token, any valid slot beyond length) → `KeptCache` [L, U, .., C]."""
  c = stored.take(rows)
  keys = jnp.take_along_axis(c.keys, slots[None, :, None, None, :], axis=4)
  values = jnp.take_along_axis(c.values, slots[None, :, None, :, None], axis=3)
  return KeptCache(cache=KVCache(keys=keys, values=values), length=length)


gather_kept = jax.jit(_gather_kept)


def _chat_core(graphdef, state, kept: KeptCache | None, tokens, mask, src, row_valid, max_new, key,
               temperature, top_p, top_k, stop_ids, *, num_new: int, mode: str):
  """kept: the U distinct prompts' kept prefixes [U, .., C] (None: C = 0, nothing kept);
  tokens/mask [U, Pn] int32: the rest of each prompt, left-padded; src [B] int32 or None (row b
  continues prompt src[b]; None: U == B); the other arguments as in `sampling._generate_core`.

  Returns (out [B, num_new] int32 (as `sampling.generate`'s core), steps () int32, cache: a
  `KVCache` [L, B, .., C + Pn + num_new] holding the kept, new and fed tokens).
  """
  model = nnx.merge(graphdef, state)
  u, pn = tokens.shape
  mask = mask.astype(jnp.int32)
  if kept is None:
    c, kept_len = 0, jnp.zeros((u,), jnp.int32)
    cache = model.init_cache(u, pn + num_new)
  else:
    c, kept_len = kept.cache.length, kept.length
    pad = pn + num_new
    cache = KVCache(keys=jnp.pad(kept.cache.keys, ((0, 0),) * 4 + ((0, pad),)),
                    values=jnp.pad(kept.cache.values, ((0, 0),) * 3 + ((0, pad), (0, 0))))
  kept_mask = (jnp.arange(c)[None, :] < kept_len[:, None]).astype(jnp.int32)   # [U, C]
  kv_mask = jnp.concatenate([kept_mask, mask, jnp.ones((u, num_new), jnp.int32)], axis=1)
  positions = kept_len[:, None] + jnp.maximum(jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 0)
  if c == 0:  # nothing kept: exactly sampling.generate's prefill
    hidden, cache = model.forward_cached(tokens, positions, cache, 0, kv_mask, mode="prefill",
                                         last_only=True)
  else:
    hidden, cache = model.forward_cached(tokens, positions, cache, c, kv_mask, mode="decode")
  logits = model.logits(hidden[:, -1])                                          # [U, V]
  lengths = kept_len + jnp.sum(mask, axis=-1, dtype=jnp.int32)                  # [U]
  if src is not None:
    cache = cache.take(src)
    logits, kv_mask, lengths = jax.tree.map(lambda x: jnp.take(x, src, axis=0), (logits, kv_mask, lengths))
  final = sampling.decode_loop(model, cache, logits, kv_mask, lengths, c + pn, row_valid, max_new, key,
                               temperature, top_p, top_k, stop_ids, num_new=num_new, mode=mode)
  return final.out, final.step, final.cache


_JIT_CACHE: dict = {}


def _compiled(graphdef, num_new: int, mode: str):
  key = (graphdef, num_new, mode)
  fn = _JIT_CACHE.get(key)
  if fn is None:
    fn = _JIT_CACHE[key] = jax.jit(functools.partial(_chat_core, graphdef, num_new=num_new, mode=mode))
  return fn


def core_program(graphdef, state, batch: int, kept_len: int, rest_len: int, params: sampling.SamplingParams,
                 *, distinct: int = 0, per_row_keys: bool = False) -> sampling.CoreProgram:
  """The jitted core that `ConversationCache.generate` runs for `batch` prompts (`distinct` of
  them different; 0: all) whose longest kept prefix has `kept_len` tokens (0: nothing kept, the
  first turn) and whose longest rest has `rest_len`, on abstract arguments (as
  `sampling.core_program`; the call places no batch on a mesh, so neither does this)."""
  b, u, pn, n = sampling.call_shapes(batch, distinct or batch, rest_len, params.max_new_tokens)
  c = bucket(kept_len, MIN_KEPT_BUCKET, half_steps=False) if kept_len else 0
  sds = jax.ShapeDtypeStruct
  kept = None
  if c:
    cache = jax.eval_shape(lambda st: nnx.merge(graphdef, st).init_cache(u, c), state)   # [L, U, .., C]
    kept = KeptCache(cache=cache, length=sds((u,), jnp.int32))
  src = sds((b,), jnp.int32) if u < b else None
  args = (state, kept, sds((u, pn), jnp.int32), sds((u, pn), jnp.int32), src, sds((b,), jnp.bool_),
          *sampling.abstract_scalars(params, b, batch, per_row_keys))
  mode = sampling._mode(float(params.temperature), float(params.top_p), int(params.top_k))
  shapes = {"batch": b, "prefill_rows": u, "kept": c, "prompt": pn, "new": n, "cache_slots": c + pn + n}
  return sampling.CoreProgram(_compiled(graphdef, n, mode), args, shapes, mode)


class ConversationCache:
  """The KV cache of the last `generate` call and the token ids of each of its rows (see module
  docstring). Not tied to one model: a call with another model (or changed weights: any state
  array replaced) starts empty. `history` collects a `CallStats` per call."""

  def __init__(self):
    self._lock = threading.Lock()
    self.clear()
    self.history: list[CallStats] = []

  def clear(self) -> None:
    """Forgets the stored cache."""
    self._cache = None          # KVCache [L, R, KV, .., S] or None
    self._rows: list[RowIndex] = []
    self._leaves: list = []     # the model state the cache was computed with (identity check)
    self._graphdef = None

  def _match(self, prompts: list[np.ndarray]) -> tuple[list[int], list[int]]:
    """(stored row index into self._rows or -1, kept length) per prompt; kept < len(prompt)."""
    if not self._rows:
      return [-1] * len(prompts), [0] * len(prompts)
    width = max(len(r.ids) for r in self._rows)
    stored = np.full((len(self._rows), width), -1, np.int32)
    for i, r in enumerate(self._rows):
      stored[i, :len(r.ids)] = r.ids
    src, kept = [], []
    for p in prompts:
      lcp = longest_prefix(stored, p)
      best = int(np.argmax(lcp))
      keep = min(int(lcp[best]), len(p) - 1)
      src.append(best if keep > 0 else -1)
      kept.append(max(keep, 0))
    return src, kept

  def generate(self, model, prompts: Sequence[Sequence[int]], max_new_tokens: int = SamplingParams.max_new_tokens,
               temperature: float = SamplingParams.temperature, top_p: float = SamplingParams.top_p,
               top_k: int = SamplingParams.top_k, seed: int = 0,
               stop_token_ids: Sequence[int] | None = None,
               row_seeds: Sequence[int] | None = None) -> list[list[int]]:
    """`sampling.generate(model, prompts, ...)` (same arguments, checks and result, per-row seeds
    included) reusing the stored cache; stores this call's cache for the next."""
    with self._lock:
      return self._generate(model, prompts, max_new_tokens, temperature, top_p, top_k, seed, stop_token_ids,
                            row_seeds)

  def _generate(self, model, prompts, max_new_tokens, temperature, top_p, top_k, seed, stop_token_ids,
                row_seeds=None):
    cfg = model.config
    if stop_token_ids is None:
      eos = cfg.eos_token_id
      stop_token_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    stop_token_ids = tuple(int(t) for t in stop_token_ids)
    sampling._check_params(max_new_tokens, temperature, top_p, top_k, stop_token_ids)
    prompts = sampling._check_prompts(prompts, cfg.vocab_size, max_new_tokens, cfg.max_position_embeddings,
                                      "generate")
    graphdef, state = nnx.split(model)
    leaves = jax.tree.leaves(state)
    if (graphdef != self._graphdef or len(leaves) != len(self._leaves)
        or any(a is not b for a, b in zip(leaves, self._leaves))):
      self.clear()
    distinct, src = sampling._distinct(prompts)
    b = bucket(len(prompts), sampling.MIN_BATCH_BUCKET)
    u = bucket(len(distinct), sampling.MIN_BATCH_BUCKET)
    if u < b:
      src = np.pad(src, (0, b - len(src)))
    else:
      distinct, u, src = prompts, b, None
    arrays = [np.asarray(p, np.int32) for p in distinct]
    rows, kept = self._match(arrays)
    rest = [p[k:] for p, k in zip(distinct, kept)]
    pn = bucket(max(len(x) for x in rest), sampling.MIN_PROMPT_BUCKET, half_steps=False)
    n = bucket(max_new_tokens, sampling.MIN_NEW_BUCKET, half_steps=False)
    tokens, mask = sampling.left_pad(rest, u, pn)
    c = 0 if max(kept) == 0 else bucket(max(kept), MIN_KEPT_BUCKET, half_steps=False)
    kept_cache = None
    if c:
      gather_rows = np.zeros((u,), np.int32)
      gather_slots = np.zeros((u, c), np.int32)
      for i, (r, k) in enumerate(zip(rows, kept)):
        if k:
          gather_rows[i] = self._rows[r].row
          gather_slots[i, :k] = self._rows[r].slots[:k]
      kept_len = np.zeros((u,), np.int32)
      kept_len[:len(kept)] = kept
      kept_cache = gather_kept(self._cache, gather_rows, gather_slots, kept_len)
    self._cache = None  # released before the call allocates the next one
    mode = sampling._mode(float(temperature), float(top_p), int(top_k))
    fn = _compiled(graphdef, n, mode)
    out, steps, cache = fn(state, kept_cache, tokens, mask, src, np.arange(b) < len(prompts),
                           jnp.int32(max_new_tokens), sampling.key_arg(seed, row_seeds, b, len(prompts)),
                           jnp.float32(temperature if temperature > 0 else 1.0), jnp.float32(top_p),
                           jnp.int32(top_k), sampling._stop_array(stop_token_ids))
    out, steps = np.asarray(out), int(steps)
    self._cache, self._graphdef, self._leaves = cache, graphdef, leaves
    self._rows = []
    stops = set(stop_token_ids)
    results = []
    for i, p in enumerate(prompts):
      d = i if src is None else int(src[i])
      k, new = kept[d], len(p) - kept[d]
      ends = np.flatnonzero(out[i] < 0)
      raw = out[i][:ends[0]] if len(ends) else out[i]            # sampled tokens, stop included
      fed = min(steps - 1, len(raw))
      ids = np.concatenate([np.asarray(p, np.int32), raw[:fed].astype(np.int32)])
      slots = np.concatenate([np.arange(k), c + pn - new + np.arange(new), c + pn + np.arange(fed)])
      self._rows.append(RowIndex(row=i, ids=ids, slots=slots.astype(np.int32)))
      results.append(sampling._cut(out[i], max_new_tokens, stops))
    kept_total = sum(kept[i if src is None else int(src[i])] for i in range(len(prompts)))
    prompt_total = sum(len(p) for p in prompts)
    prefilled = sum(len(distinct[d]) - kept[d] for d in range(len(distinct)))
    self.history.append(CallStats(prompt_tokens=prompt_total, kept_tokens=kept_total,
                                  prefilled_tokens=prefilled))
    return results
