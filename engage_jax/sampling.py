"""Batched autoregressive sampling with a KV cache: one jitted prefill + `lax.while_loop` decode.

    new_ids = sampling.generate(model, prompts, max_new_tokens=64, temperature=0.0, top_p=1.0,
                                top_k=0, seed=0, stop_token_ids=(eos,))

* `prompts` is a ragged `list[list[int]]`; the result holds the *new* tokens of each row only, cut
  after the first stop token (the stop token is kept as the row's last element; a row that never
  stops has exactly `max_new_tokens` tokens).
* `temperature=0.0` is greedy argmax, token for token what transformers'
  `generate(do_sample=False)` gives for the same fp32 weights. Otherwise logits / temperature,
  then top-k (0 = off), then top-p (1.0 = off), then a categorical draw with an explicit PRNG key
  derived from `seed` (same seed → same samples).

Shapes and compilation. Prompts are left-padded to `P` (a power of two, at least 16) and the batch
to `B` (a power of two or 1.5x one, at least 8: `bucket`); the cache has `S = P + N` slots, `N` =
`max_new_tokens` rounded up to a power of two (at least 16). Prompt tokens occupy slots
`[0, P)`, the i-th new token slot `P + i`; positions are per row (`prompt_len + i`), and
`kv_mask [B, S]` hides the left padding. Repeated prompts (the k candidates of one search leaf)
are prefilled once when that shrinks the batch bucket: the prefill runs over the `U` distinct
prompts (bucketed like B) and each row then gathers its prompt's cache. The whole prefill +
decode is ONE jitted function per `(B, U, P, N, sampling mode)` with the NNX model split into a
static graphdef and its state (an argument, so a sharded state stays sharded); temperature /
top-p / top-k / seed / the true `max_new_tokens` / the stop ids are traced values, so changing
them does not recompile. The decode loop stops early once
every row has stopped. The prefill computes the last layer's queries, attention and MLP for the
last position only (`CausalLM.forward_cached(mode="prefill", last_only=True)`).

The KV cache (`KVCache(keys [L, B, KV, hd, S], values [L, B, KV, S, hd])`, stacked over layers) is allocated
inside the jitted function and carried through the while loop (in a `DecodeState`), where each
step writes one slot with `dynamic_update_slice` in place (no copy of the cache per step; checked
in the XLA dump), so there is no input buffer to donate. The decode loop (`decode_loop`) is shared
with `engage_jax.chat_cache`, which continues a stored conversation cache instead of prefilling
from token 0 (`rollout.Speaker(kv_cache=True)`).

`sequence_logprobs` scores given completions with one full forward pass (`logprobs.token_logps`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from engage_jax import sharding
from engage_jax.fields import Int, Num, field
from engage_jax.buckets import bucket  # sampling.bucket: the rung of one size (batch, prompt, new tokens)
from engage_jax.logprobs import token_logps
from engage_jax.models.llama import KVCache

MIN_BATCH_BUCKET = 8
MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16
MAX_STOP_IDS = 8  # stop ids are padded to this many (static shape); more is a ValueError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Sampling settings of one `generate` call (see `generate`)."""
  KEY_KIND: ClassVar[str] = "sampling"   # config_check: "unknown sampling key"
  max_new_tokens: int = field(64, "longest reply in tokens", Int(1))
  temperature: float = field(0.0, "softmax temperature (0: greedy)", Num(0.0))
  top_p: float = field(1.0, "nucleus sampling mass (1.0: off)", Num(0.0, 1.0, lo_open=True))
  top_k: int = field(0, "sample among the k most likely tokens (0: off)", Int(0, " (0: off)"))
  stop_token_ids: tuple[int, ...] = field((), "ids that end a reply (rollout.Speaker: the tokenizer's "
                                              "end-of-turn / eos)", key=False)

  def validate(self) -> None:
    _check_params(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.stop_token_ids)

  def kwargs(self) -> dict:
    """Keyword arguments for `generate`."""
    return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                top_k=self.top_k, stop_token_ids=tuple(self.stop_token_ids))


def _check_params(max_new_tokens, temperature, top_p, top_k, stop_token_ids) -> None:
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}")
  if not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature!r}")
  if not (0.0 < top_p <= 1.0):
    raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")
  if not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"generate: top_k must be an int >= 0 (0 = off), got {top_k!r}")
  if len(stop_token_ids) > MAX_STOP_IDS:
    raise ValueError(f"generate: at most {MAX_STOP_IDS} stop_token_ids, got {len(stop_token_ids)}")


def _check_prompts(prompts, vocab_size: int, extra: int, max_pos: int, what: str) -> list[list[int]]:
  if prompts is None or len(prompts) == 0:
    raise ValueError(f"{what}: empty prompt list")
  out = []
  for i, p in enumerate(prompts):
    p = [int(t) for t in p]
    if not p:
      raise ValueError(f"{what}: prompt {i} is empty")
    if min(p) < 0 or max(p) >= vocab_size:
      raise ValueError(f"{what}: prompt {i} has a token id outside [0, {vocab_size})")
    if len(p) + extra > max_pos:
      raise ValueError(f"{what}: prompt {i} has {len(p)} tokens; with {extra} new tokens that exceeds "
                       f"the model's max_position_embeddings={max_pos}")
    out.append(p)
  return out


def _distinct(prompts: list[list[int]]) -> tuple[list[list[int]], np.ndarray]:
  """(distinct prompts in first-seen order, src int32 [N]: prompts[i] == distinct[src[i]])."""
  index: dict[tuple[int, ...], int] = {}
  src = np.array([index.setdefault(tuple(p), len(index)) for p in prompts], np.int32)
  distinct = [list(k) for k in index]
  return distinct, src


def left_pad(prompts: list[list[int]], b: int, p: int) -> tuple[np.ndarray, np.ndarray]:
  """ragged prompts → (tokens [b, p] int32 left-padded with 0, mask [b, p] int32). Extra rows
  beyond len(prompts) repeat prompt 0 (their output is dropped)."""
  tokens = np.zeros((b, p), np.int32)
  mask = np.zeros((b, p), np.int32)
  for i in range(b):
    row = prompts[i] if i < len(prompts) else prompts[0]
    tokens[i, p - len(row):] = row
    mask[i, p - len(row):] = 1
  return tokens, mask


# ---------------------------------------------------------------------------------------- sampling
def _sortable_key(x: jax.Array) -> jax.Array:
  """fp32 [..] → uint32 keys with the same order as the floats (-inf < ... < +inf)."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.int32)    # -0.0 → +0.0
  key = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  return jax.lax.bitcast_convert_type(key, jnp.uint32) ^ jnp.uint32(0x80000000)


def _largest_key_with(keys: jax.Array, enough) -> jax.Array:
  """The largest threshold m [B, 1] (uint32) with `enough(keys >= m)` true, for a predicate that is
  monotone (true for small m) and true at the row minimum. Exact bisection over the 2^32 keys: 33
  rounds of one masked reduction over [B, V] each, no sort."""
  lo = jnp.min(keys, axis=-1, keepdims=True)                                   # enough(lo) holds
  hi = jnp.max(keys, axis=-1, keepdims=True)

  def body(_, bounds):
    lo, hi = bounds                                   # the answer lies in [lo, hi]
    gap = hi - lo
    mid = lo + gap // 2 + gap % 2                     # lo < mid <= hi while gap > 0 (no overflow)
    ok = enough(keys >= mid)
    live = gap > 0
    return jnp.where(live & ok, mid, lo), jnp.where(live & ~ok, mid - 1, hi)

  lo, _ = jax.lax.fori_loop(0, 33, body, (lo, hi))
  return lo


def filter_mask(logits: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
  """Which tokens survive top-k then top-p (transformers' order): bool [B, V] from fp32 [B, V].

  top-k keeps the logits >= the k-th largest (ties kept; k <= 0 = off); top-p then keeps the
  smallest set of largest probabilities (renormalised after top-k) whose mass reaches top_p, i.e.
  every logit >= the largest threshold whose kept mass is >= top_p (ties kept; the most likely
  token always kept; p >= 1 = off). Thresholds are found by exact bisection on the floats' bit
  patterns instead of a [B, V] sort, which XLA:CPU runs slowly, row by row: a row's mask never
  depends on the other rows of its batch.
  """
  keys = _sortable_key(logits)
  v = logits.shape[-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  kth = jax.lax.cond(k < v,
                     lambda: _largest_key_with(keys, lambda m: jnp.sum(m, -1, keepdims=True) >= k),
                     lambda: jnp.min(keys, axis=-1, keepdims=True))
  keep = keys >= kth
  probs = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)

  def nucleus():
    mass = lambda m: jnp.sum(jnp.where(m, probs, 0.0), -1, keepdims=True) >= top_p
    return _largest_key_with(jnp.where(keep, keys, jnp.uint32(0)), mass)

  thresh = jax.lax.cond(top_p < 1.0, nucleus, lambda: kth)
  return keep & (keys >= thresh)


def sample_logits(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  top_k: jax.Array, *, mode: str) -> jax.Array:
  """Next tokens [B] int32 from fp32 logits [B, V]; key: one PRNG key () or per-row keys [B].

  mode (static): "greedy" (argmax; the other arguments are ignored), "sample" (temperature only),
  "filter" (temperature, then top-k with k <= 0 meaning off, then top-p with p >= 1 meaning off;
  see `filter_mask`).
  """
  if mode == "greedy":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if mode == "filter":
    logits = jnp.where(filter_mask(logits, top_p, top_k), logits, -jnp.inf)
  elif mode != "sample":
    raise ValueError(f"sample_logits: unknown mode {mode!r}")
  if key.ndim == 1:  # per-row keys [B]: row b's draw depends on its key alone
    return jax.vmap(lambda k, x: jax.random.categorical(k, x))(key, logits).astype(jnp.int32)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _mode(temperature: float, top_p: float, top_k: int) -> str:
  if temperature == 0.0:
    return "greedy"
  return "filter" if (top_k > 0 or top_p < 1.0) else "sample"


# ---------------------------------------------------------------------------------------- jitted core
@struct.dataclass
class DecodeState:
  """The carry of the decode `lax.while_loop` (B rows, N = num_new slots for new tokens)."""
  step: jax.Array     # () int32: index in `out` of the token this step samples (1 = first step)
  cache: KVCache      # keys [L, B, KV, hd, S], values [L, B, KV, S, hd]
  token: jax.Array    # [B] int32: the last sampled token (-1 once a row is done)
  done: jax.Array     # [B] bool: the row has sampled a stop token (or is batch padding)
  out: jax.Array      # [B, N] int32: sampled tokens so far, -1 elsewhere
  key: jax.Array      # PRNG key () split once per step, or per-row keys [B] (folded with the step)


def row_keys(row_seeds) -> jax.Array:
  """uint32 [B] seeds → typed PRNG keys [B] (one per row; `generate(row_seeds=...)`)."""
  return jax.vmap(jax.random.key)(row_seeds)


def step_key(key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
  """(carry, key for this step's draw): a single key () is split (carry = the new key); per-row
  keys [B] stay the carry and each row draws with fold_in(its key, step)."""
  if key.ndim == 0:
    key, sub = jax.random.split(key)
    return key, sub
  return key, jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, step)


def _generate_core(graphdef, state, tokens, prompt_mask, src, row_valid, max_new, key, temperature,
                   top_p, top_k, stop_ids, *, num_new: int, mode: str):
  """tokens/prompt_mask [U, P] (left-padded distinct prompts); src [B] int32 or None: row b
  continues prompt src[b] (None: U == B, row b is prompt b); row_valid [B] bool (False = batch
  padding, treated as stopped from the start so it never delays the early exit); max_new () int32
  <= num_new; stop_ids [K] (-1 pad).

  Returns (out [B, num_new] int32: sampled tokens, -1 after a row's stop token / beyond max_new,
  steps () int32: decode steps run).
  """
  model = nnx.merge(graphdef, state)
  u, p = tokens.shape
  s = p + num_new
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1, dtype=jnp.int32) - 1, 0)
  new_slots = jnp.ones((u, num_new), prompt_mask.dtype)
  kv_mask = jnp.concatenate([prompt_mask, new_slots], axis=1)                    # [U, S]
  hidden, cache = model.forward_cached(tokens, positions, model.init_cache(u, s), 0, kv_mask,
                                       mode="prefill", last_only=True)
  logits = model.logits(hidden[:, -1])                                          # [U, V]
  if src is not None:  # one prefill per distinct prompt, then each row takes its prompt's cache
    cache = cache.take(src)
    logits, kv_mask, prompt_mask = jax.tree.map(lambda x: jnp.take(x, src, axis=0), (logits, kv_mask, prompt_mask))
  lengths = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)                      # [B]
  final = decode_loop(model, cache, logits, kv_mask, lengths, p, row_valid, max_new, key, temperature,
                      top_p, top_k, stop_ids, num_new=num_new, mode=mode)
  return final.out, final.step


def decode_loop(model, cache, logits, kv_mask, lengths, first_slot, row_valid, max_new, key,
                temperature, top_p, top_k, stop_ids, *, num_new: int, mode: str) -> DecodeState:
  """Samples the first token from `logits` [B, V] (the prompts' last positions), then decodes in a
  `lax.while_loop` until every row stopped or `max_new` tokens (traced, <= num_new).
  key: one PRNG key () or per-row keys [B] (`row_keys`; see `step_key`).

  cache: `KVCache` [L, B, .., S] holding the prompts (S >= first_slot + num_new);
  kv_mask [B, S]: the slots of real prompt tokens, and ones from `first_slot` on; lengths [B]
  int32: prompt tokens per row (the position of the first new token); the i-th new token (0-based)
  is fed at slot `first_slot + i` with position `lengths + i`. Returns the final `DecodeState`
  (its `cache` holds every fed token; `step` - 1 tokens were fed per live row).
  """
  b = row_valid.shape[0]
  key, sub = step_key(key, 0)
  tok = sample_logits(logits, sub, temperature, top_p, top_k, mode=mode)
  is_stop = lambda t: jnp.any(t[:, None] == stop_ids[None, :], axis=-1)
  done = is_stop(tok) | ~row_valid
  out = jnp.full((b, num_new), -1, jnp.int32).at[:, 0].set(tok)

  def cond(st: DecodeState):
    return (st.step < max_new) & ~jnp.all(st.done)

  def body(st: DecodeState) -> DecodeState:
    i = st.step
    pos = (lengths + i - 1)[:, None]                                              # [B, 1]
    hidden, cache = model.forward_cached(st.token[:, None], pos, st.cache, first_slot + i - 1, kv_mask,
                                         mode="decode")
    logits = model.logits(hidden[:, 0])
    key, sub = step_key(st.key, i)
    nxt = sample_logits(logits, sub, temperature, top_p, top_k, mode=mode)
    nxt = jnp.where(st.done, -1, nxt)
    out = jax.lax.dynamic_update_slice(st.out, nxt[:, None], (0, i))
    return DecodeState(step=i + 1, cache=cache, token=nxt, done=st.done | is_stop(nxt), out=out, key=key)

  init = DecodeState(step=jnp.int32(1), cache=cache, token=tok, done=done, out=out, key=key)
  return jax.lax.while_loop(cond, body, init)


_JIT_CACHE: dict = {}


def _compiled(graphdef, num_new: int, mode: str):
  """The jitted core for (graphdef, N, mode); jax.jit caches per input shape / sharding (and
  whether `src` is None)."""
  key = (graphdef, num_new, mode)
  fn = _JIT_CACHE.get(key)
  if fn is None:
    fn = jax.jit(functools.partial(_generate_core, graphdef, num_new=num_new, mode=mode))
    _JIT_CACHE[key] = fn
  return fn


def compilation_count() -> int:
  """Total number of compiled `generate` executables so far (for tests / diagnostics)."""
  return sum(fn._cache_size() for fn in _JIT_CACHE.values())


def _stop_array(stop_token_ids) -> np.ndarray:
  arr = np.full((MAX_STOP_IDS,), -1, np.int32)
  ids = [int(t) for t in stop_token_ids]
  arr[:len(ids)] = ids
  return arr


def _cut(row: np.ndarray, max_new: int, stops: set[int]) -> list[int]:
  res = []
  for t in row[:max_new].tolist():
    if t < 0:
      break
    res.append(t)
    if t in stops:
      break
  return res


def key_arg(seed: int, row_seeds: Sequence[int] | None, b: int, n: int) -> jax.Array:
  """The PRNG argument of a call over n prompts padded to b rows: `key(seed)` (), or per-row keys
  [b] from `row_seeds` (n ints; padding rows get seed 0). Raises ValueError on a length mismatch."""
  if row_seeds is None:
    return jax.random.key(seed)
  if len(row_seeds) != n:
    raise ValueError(f"generate: {len(row_seeds)} row_seeds for {n} prompts")
  seeds = np.zeros((b,), np.uint32)
  seeds[:n] = [int(x) & 0xFFFFFFFF for x in row_seeds]
  return row_keys(seeds)


def call_shapes(n_prompts: int, n_distinct: int, longest: int, max_new_tokens: int,
                mesh=None) -> tuple[int, int, int, int]:
  """(B, U, P, N): the bucketed batch, prefill rows (U < B: the distinct prompts are prefilled
  once, else U = B), prompt and new-token lengths of a `generate` call (module doc)."""
  b = bucket(n_prompts, MIN_BATCH_BUCKET)
  u = bucket(n_distinct, MIN_BATCH_BUCKET)
  if mesh is not None:
    b, u = sharding.round_to_batch(b, mesh), sharding.round_to_batch(u, mesh)
  p = bucket(longest, MIN_PROMPT_BUCKET, half_steps=False)
  n = bucket(max_new_tokens, MIN_NEW_BUCKET, half_steps=False)
  return b, min(u, b), p, n


@dataclasses.dataclass
class CoreProgram:
  """A sampler's jitted core and abstract arguments (`jax.ShapeDtypeStruct`s) of one call shape:
  `lower()` is the program such a call compiles (engage_jax/memory_plan.py plans it). shapes: the
  bucketed sizes {"batch" B, "prefill_rows" U, "kept" C, "prompt" P, "new" N, "cache_slots" S};
  mode: the sampling mode ("greedy" | "sample" | "filter")."""
  fn: Any
  args: tuple
  shapes: dict
  mode: str

  def lower(self):
    return self.fn.lower(*self.args)


def abstract_scalars(params: SamplingParams, b: int, n_prompts: int, per_row_keys: bool) -> tuple:
  """Abstract (max_new, key, temperature, top_p, top_k, stop ids) as `generate` passes them."""
  seeds = [0] * n_prompts if per_row_keys else None
  key = jax.eval_shape(lambda: key_arg(0, seeds, b, n_prompts))
  sds = jax.ShapeDtypeStruct
  return (sds((), jnp.int32), key, sds((), jnp.float32), sds((), jnp.float32), sds((), jnp.int32),
          sds((MAX_STOP_IDS,), jnp.int32))


def core_program(graphdef, state, batch: int, prompt_len: int, params: SamplingParams, *,
                 distinct: int = 0, mesh=None, per_row_keys: bool = False) -> CoreProgram:
  """The jitted core that `generate(model, prompts, **params.kwargs(), mesh=mesh)` runs for
  `batch` prompts of at most `prompt_len` tokens, `distinct` of them different (0: all), on
  abstract arguments. graphdef, state: `nnx.split` of the model (state: arrays or
  ShapeDtypeStructs carrying the model's shardings). per_row_keys: the `row_seeds` form."""
  b, u, p, n = call_shapes(batch, distinct or batch, prompt_len, params.max_new_tokens, mesh)

  def sds(shape, dtype):
    place = sharding.batch_sharding(mesh, len(shape)) if mesh is not None else None
    return jax.ShapeDtypeStruct(shape, dtype, sharding=place)
  src = sds((b,), jnp.int32) if u < b else None
  args = (state, sds((u, p), jnp.int32), sds((u, p), jnp.int32), src, sds((b,), jnp.bool_),
          *abstract_scalars(params, b, batch, per_row_keys))
  mode = _mode(float(params.temperature), float(params.top_p), int(params.top_k))
  shapes = {"batch": b, "prefill_rows": u, "kept": 0, "prompt": p, "new": n, "cache_slots": p + n}
  return CoreProgram(_compiled(graphdef, n, mode), args, shapes, mode)


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = SamplingParams.max_new_tokens,
             temperature: float = SamplingParams.temperature, top_p: float = SamplingParams.top_p,
             top_k: int = SamplingParams.top_k, seed: int = 0,
             stop_token_ids: Sequence[int] | None = None, *, mesh=None,
             row_seeds: Sequence[int] | None = None) -> list[list[int]]:
  """New tokens for each prompt (see module docstring).

  model: a `CausalLM` (possibly with a sharded state). prompts: N ragged lists of token ids.
  stop_token_ids: default `(config.eos_token_id,)` (all of them if a list; none if unset).
  mesh: optional `jax.sharding.Mesh`; when given, the padded batch is placed with its batch axis
  over the mesh's data-parallel axes ("data", "fsdp" where present). Without it inputs follow
  the model state's placement (jit's default).
  Returns N lists of ints, each cut after its first stop token (kept) and at most max_new_tokens.
  """
  cfg = model.config
  if stop_token_ids is None:
    eos = cfg.eos_token_id
    stop_token_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
  stop_token_ids = tuple(int(t) for t in stop_token_ids)
  _check_params(max_new_tokens, temperature, top_p, top_k, stop_token_ids)
  prompts = _check_prompts(prompts, cfg.vocab_size, max_new_tokens, cfg.max_position_embeddings,
                           "generate")
  distinct, src = _distinct(prompts)
  b, u, p, n = call_shapes(len(prompts), len(distinct), max(len(x) for x in prompts), max_new_tokens, mesh)
  if u < b:  # share prefills only where that shrinks the prefill's batch bucket
    src = np.pad(src, (0, b - len(src)))
  else:
    distinct, src = prompts, None
  tokens, mask = left_pad(distinct, u, p)
  mode = _mode(float(temperature), float(top_p), int(top_k))
  graphdef, state = nnx.split(model)
  args = [tokens, mask, src, np.arange(b) < len(prompts)]
  if mesh is not None:
    args = sharding.place_batch(args, mesh)
  fn = _compiled(graphdef, n, mode)
  out, _ = fn(state, *args, jnp.int32(max_new_tokens), key_arg(seed, row_seeds, b, len(prompts)),
              jnp.float32(temperature if temperature > 0 else 1.0), jnp.float32(top_p),
              jnp.int32(top_k), _stop_array(stop_token_ids))
  out = sharding.to_host(out)
  stops = set(stop_token_ids)
  return [_cut(out[i], max_new_tokens, stops) for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------- log-probs
def _logprobs_core(graphdef, state, tokens, mask, target_mask):
  """tokens/mask/target_mask [B, T] (right-padded prompt + completion) → sum of the fp32 log-probs
  of the tokens where target_mask is 1, given everything before them: [B]."""
  model = nnx.merge(graphdef, state)
  hidden = model.hidden_states(tokens, mask)                                    # [B, T, D]
  logits = model.logits(hidden[:, :-1])                                         # [B, T-1, V] fp32
  tok_lp = token_logps(logits, tokens[:, 1:])                                   # [B, T-1]
  return jnp.sum(jnp.where(target_mask[:, 1:] > 0, tok_lp, 0.0), axis=-1)


_LOGPROB_JIT: dict = {}


def sequence_logprobs(model, prompts: Sequence[Sequence[int]],
                      completions: Sequence[Sequence[int]]) -> np.ndarray:
  """Sum of log p(completion tokens | prompt) per row (fp32, `logprobs.token_logps`): float32 [N].

  prompts / completions: N ragged token lists (each non-empty). Rows are right-padded to a
  power-of-two length and a bucketed batch (`bucket`, as `generate` pads), so similar calls share
  one compiled function.
  """
  cfg = model.config
  if len(prompts) != len(completions):
    raise ValueError(f"sequence_logprobs: {len(prompts)} prompts but {len(completions)} completions")
  prompts = _check_prompts(prompts, cfg.vocab_size, 0, cfg.max_position_embeddings, "sequence_logprobs")
  completions = _check_prompts(completions, cfg.vocab_size, 0, cfg.max_position_embeddings,
                               "sequence_logprobs (completion)")
  rows = [p + c for p, c in zip(prompts, completions)]
  longest = max(len(r) for r in rows)
  if longest > cfg.max_position_embeddings:
    raise ValueError(f"sequence_logprobs: a prompt + completion has {longest} tokens > "
                     f"max_position_embeddings={cfg.max_position_embeddings}")
  b, t = bucket(len(rows), MIN_BATCH_BUCKET), bucket(longest, MIN_PROMPT_BUCKET, half_steps=False)
  tokens = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  target = np.zeros((b, t), np.int32)
  for i, (p, r) in enumerate(zip(prompts, rows)):
    tokens[i, :len(r)] = r
    mask[i, :len(r)] = 1
    target[i, len(p):len(r)] = 1
  graphdef, state = nnx.split(model)
  fn = _LOGPROB_JIT.get(graphdef)
  if fn is None:
    fn = _LOGPROB_JIT[graphdef] = jax.jit(functools.partial(_logprobs_core, graphdef))
  out = np.asarray(sharding.to_host(fn(state, tokens, mask, target)), np.float32)
  return out[:len(rows)]
