"""Flax NNX decoder for the Llama family: Llama 2/3 (incl. llama3 rope scaling), Mistral, Qwen2.

RMSNorm → grouped-query attention with rotary embeddings (and optional q/k/v bias) → RMSNorm →
SwiGLU MLP, tied or untied output embedding. Two entry points:

* `model(input_ids [B, T], attention_mask [B, T], positions [B, T]) -> logits [B, T, V]` (fp32).
* the KV-cache path: `cache = model.init_cache(B, S)`, then
  `model.forward_cached(ids [B, T], positions [B, T], cache, cache_index, kv_mask [B, S], mode=...)
  -> (hidden [B, T, D], cache)` writes the T new keys/values at slots `cache_index..+T-1`;
  `model.logits(hidden)` gives the logits. `mode` (static) says which attention runs:
  "decode" (the default): token t attends to every cache slot `s <= cache_index + t` with
  `kv_mask[b, s]`; "prefill" (an empty cache, `cache_index` 0): the T tokens attend causally among
  themselves (blocked causal self-attention, optionally for the last position only).

Scanned layers: `model.layers` is ONE `DecoderLayer` whose parameters (and LoRA adapters) are
stacked over a leading layer axis [L, ...] (state path `layers/self_attn/q_proj/kernel`, shape
[L, D, H*hd]); every forward runs it with one `jax.lax.scan` (`CausalLM.run_layers`), so the
traced and compiled program holds one layer body whatever the depth. `scan_layers=False` runs the
same stacked layers as an unrolled Python loop over their slices instead: the same numbers, and a
compile time that grows with depth, for backends where the unrolled program runs faster (the
compile-vs-runtime knob of MaxText's `scan_layers`). On this project's 2-core CPU it did not pay:
SmolLM2-135M's SFT step at B=8 x 256 took 13.1 s unrolled vs 13.4 s scanned, and a 3-step call
with compilation 64 s vs 52 s (benchmarks/results/smollm2_vs_hf.json). HF / GGUF / PEFT names stay
per layer (`model.layers.3...`): the importers stack, the exporters unstack (`models.hf`,
`models.lora`).

The cache is a `KVCache(keys [L, B, KV, hd, S], values [L, B, KV, S, hd])`, stacked over layers
and carried through the layer scan (head-major with transposed keys: both decode attention products
are then plain matmuls, which XLA:CPU runs much faster than with `[B, S, KV, hd]` or keys
`[B, KV, S, hd]`). Layer l writes its new keys/values in place at `[l, :, :, :, slots]`.

Sharding and remat are declared here: the residual stream [B, T, D] (embedding output and every
layer's output) is constrained to `sharding.HIDDEN_AXES` on the mesh set with `jax.set_mesh` (a
no-op without one), and `CausalLM(..., remat=True)` recomputes each layer in the backward pass
(`jax.checkpoint` of the scanned layer body).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from engage_jax import sharding
from engage_jax.models.config import ModelConfig

MODES = ("prefill", "decode")  # the cached forward's attention (module docstring)


@struct.dataclass
class KVCache:
  """The KV cache of every layer, stacked over layers. Keys are stored transposed so the decode
  score product q·k is a plain matmul with S as its wide N."""
  keys: jax.Array    # [L, B, KV, hd, S]
  values: jax.Array  # [L, B, KV, S, hd]

  @property
  def length(self) -> int:
    """S, the number of slots."""
    return self.keys.shape[-1]

  def write(self, layer, kt: jax.Array, v: jax.Array, index) -> KVCache:
    """Layer `layer`'s kt [B, KV, hd, T] / v [B, KV, T, hd] written at slots index..index+T-1 (in
    place under jit)."""
    zero, index = jnp.zeros((), jnp.int32), jnp.asarray(index, jnp.int32)
    layer = jnp.asarray(layer, jnp.int32)
    return KVCache(
        keys=jax.lax.dynamic_update_slice(self.keys, kt[None].astype(self.keys.dtype),
                                          (layer, zero, zero, zero, index)),
        values=jax.lax.dynamic_update_slice(self.values, v[None].astype(self.values.dtype),
                                            (layer, zero, zero, index, zero)))

  def layer(self, layer) -> tuple[jax.Array, jax.Array]:
    """Layer `layer`'s (keys [B, KV, hd, S], values [B, KV, S, hd])."""
    return (jax.lax.dynamic_index_in_dim(self.keys, layer, 0, keepdims=False),
            jax.lax.dynamic_index_in_dim(self.values, layer, 0, keepdims=False))

  def take(self, rows: jax.Array) -> KVCache:
    """The cache of batch rows `rows` [U] int (a gather along B)."""
    return KVCache(keys=jnp.take(self.keys, rows, axis=1), values=jnp.take(self.values, rows, axis=1))


def cache_shapes(config: ModelConfig, batch: int, length: int) -> tuple[tuple, tuple]:
  """Shapes of the cached (keys, values): ([L, B, KV, hd, S], [L, B, KV, S, hd])."""
  n, kv, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
  return (n, batch, kv, hd, length), (n, batch, kv, length, hd)


def init_cache(config: ModelConfig, batch: int, length: int, dtype) -> KVCache:
  """Zeroed `KVCache(keys [L, B, KV, hd, S], values [L, B, KV, S, hd])` (for an abstract one:
  `jax.eval_shape(lambda: init_cache(config, B, S, dtype))`)."""
  k_shape, v_shape = cache_shapes(config, batch, length)
  return KVCache(keys=jnp.zeros(k_shape, dtype), values=jnp.zeros(v_shape, dtype))


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module of the (identical) structure of `modules` whose every variable is the stack of
  theirs over a new leading axis [L, ...] (the scanned layout)."""
  graphdef, first = nnx.split(modules[0])
  states = [first] + [nnx.split(m)[1] for m in modules[1:]]
  return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
  return (jax.random.normal(rngs.params(), shape, jnp.float32) * std).astype(dtype)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel [in, out] (the transpose of torch's `weight`).

  LoRA hook (engage_jax.models.lora.apply_lora): with an `nnx.LoRA` adapter in `self.lora`
  (A [in, r], B [r, out]) and `lora_enabled`, y += lora_scale · (x A) B. Without one (the
  default) the computation is exactly the plain projection."""

  def __init__(self, din: int, dout: int, *, use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_normal(rngs, (din, dout), param_dtype))
    self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if use_bias else None
    self.dtype = dtype
    self.lora = None
    self.lora_scale = 0.0
    self.lora_enabled = True

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None and self.lora_enabled:
      y = y + (self.lora(x.astype(self.dtype)) * self.lora_scale).astype(y.dtype)
    return y


class RMSNorm(nnx.Module):
  """x / rms(x) * weight, normalised in fp32 as transformers does."""

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


def rope_inv_freq(config: ModelConfig) -> jax.Array:
  """Inverse frequencies [hd // 2] including `llama3` / `linear` scaling (as transformers computes them)."""
  hd = config.head_dim
  inv = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  scaling = config.rope_scaling or {}
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "linear":
    inv = inv / scaling["factor"]
  elif rope_type == "llama3":
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = jnp.where(medium, smoothed, scaled)
  return inv


def rope_cos_sin(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """positions [B, T] → cos, sin [B, T, hd] (fp32, halves repeated like transformers)."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, N, hd] rotated by cos/sin [B, T, hd] (rotate-half convention)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


QUERY_CHUNK = 128  # self-attention queries per block (causal blocks skip the keys after them)


def causal_allowed(q_slots: jax.Array, k_slots: jax.Array, window: int | None) -> jax.Array:
  """[T, S] bool: query slot q_slots[t] may see key slot k_slots[s] (s <= t, inside the window)."""
  allowed = k_slots[None, :] <= q_slots[:, None]
  if window is not None:
    allowed = allowed & (q_slots[:, None] - k_slots[None, :] < window)
  return allowed


def attend(q: jax.Array, kt: jax.Array, v: jax.Array, mask: jax.Array, dtype) -> jax.Array:
  """Grouped-query attention core. q [B, T, KV, G, hd]; keys kt [B, KV, hd, S] (transposed);
  values v [B, KV, S, hd]; mask [B, T, S] (True = may attend) → [B, T, KV*G*hd]. Scores and
  softmax in fp32. With keys stored [hd, S] both products are plain [M, K] x [K, N] matmuls with
  a wide N (an isolated 6-layer decode-attention loop ran 2x faster on XLA:CPU than with keys
  [S, hd] and the grouped einsums)."""
  b, t, kv, g, hd = q.shape
  # one batched matmul per (b, k) with M = g*t rows: [M, hd] x [hd, S], then [M, S] x [S, hd]
  qm = q.transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
  scores = jnp.einsum("bkmd,bkds->bkms", qm, kt.astype(dtype)).astype(jnp.float32)
  scores = jnp.where(mask[:, None, None], scores.reshape(b, kv, g, t, -1) * (1.0 / math.sqrt(hd)),
                     _MASK_VALUE).reshape(b, kv, g * t, -1)
  # softmax normalised after the PV product: divide the [.., M, hd] output, not the [.., M, S] weights
  weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum("bkms,bksd->bkmd", weights.astype(dtype), v.astype(dtype))
  out = (out.astype(jnp.float32) / denom).astype(dtype)
  return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g * hd)


def causal_self_attention(q: jax.Array, kt: jax.Array, v: jax.Array, valid: jax.Array,
                          window: int | None, dtype, chunk: int = QUERY_CHUNK) -> jax.Array:
  """Causal attention of T tokens to themselves (slot t attends to slots s <= t with valid[b, s],
  and s > t - window for a sliding window). q [B, T, KV, G, hd]; kt [B, KV, hd, T];
  v [B, KV, T, hd]; valid [B, T] bool → [B, T, KV*G*hd]. Queries go in blocks of `chunk` against
  only the keys up to the block's end, so the [T, T] score matrix above the diagonal blocks is
  never computed (about half of it for long T) and each block's scores stay small."""
  t = q.shape[1]
  outs = []
  for lo in range(0, t, chunk):
    hi = min(t, lo + chunk)
    mask = causal_allowed(jnp.arange(lo, hi), jnp.arange(hi), window)[None] & valid[:, None, :hi]
    outs.append(attend(q[:, lo:hi], kt[..., :hi], v[:, :, :hi], mask, dtype))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
  """Grouped-query attention; H query heads share KV key/value heads in groups of G = H // KV."""

  def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, hd = config.hidden_size, config.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Linear(d, self.num_heads * hd, use_bias=config.attention_bias, **kw)
    self.k_proj = Linear(d, self.num_kv_heads * hd, use_bias=config.attention_bias, **kw)
    self.v_proj = Linear(d, self.num_kv_heads * hd, use_bias=config.attention_bias, **kw)
    self.o_proj = Linear(self.num_heads * hd, d, use_bias=False, **kw)
    self.window = config.sliding_window
    self.dtype = dtype

  def __call__(self, x, cos, sin, valid, cache: KVCache | None = None, layer=0, cache_index=0,
               q_slots=None, *, mode: str = "prefill", last_only: bool = False):
    """x [B, T, D]; cos/sin [B, T, hd]; valid [B, S] bool: which key slots hold real tokens.

    The new keys/values are written into layer `layer` (int, may be traced) of `cache` (when
    given) at slots `cache_index..+T-1`.
    mode (static) "prefill": causal self-attention of the T tokens (slots 0..T-1: no cache, or
    `cache_index` 0); "decode" (needs a cache): query t (slot q_slots[t], [T] int) attends to
    every cache slot s <= q_slots[t] with valid[b, s]. Both keep to the sliding window.
    last_only (prefill only): keys/values of all T tokens, but the output of the last query alone
    ([B, 1, D]). Returns (out [B, T or 1, D], new KVCache or None).
    """
    if mode not in MODES:
      raise ValueError(f"Attention: mode must be one of {MODES}, got {mode!r}")
    if mode == "decode" and cache is None:
      raise ValueError("Attention: mode='decode' needs a cache")
    if last_only and mode != "prefill":
      raise ValueError("Attention: last_only needs mode='prefill'")
    b, t, _ = x.shape
    kv, g, hd = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
    kt = apply_rope(self.k_proj(x).reshape(b, t, kv, hd), cos, sin).transpose(0, 2, 3, 1)
    v = self.v_proj(x).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
    new_cache = None if cache is None else cache.write(layer, kt, v, cache_index)
    if last_only:
      x, cos, sin = x[:, -1:], cos[:, -1:], sin[:, -1:]
    tq = x.shape[1]
    q = apply_rope(self.q_proj(x).reshape(b, tq, self.num_heads, hd), cos, sin)
    q = q.reshape(b, tq, kv, g, hd).astype(self.dtype)
    if last_only:
      allowed = causal_allowed(jnp.array([t - 1]), jnp.arange(t), self.window)
      out = attend(q, kt, v, allowed[None] & valid[:, None, :t], self.dtype)
    elif mode == "prefill":
      out = causal_self_attention(q, kt, v, valid[:, :t], self.window, self.dtype)
    else:
      allowed = causal_allowed(q_slots, jnp.arange(valid.shape[1]), self.window)
      keys, values = new_cache.layer(layer)
      out = attend(q, keys, values, allowed[None] & valid[:, None, :], self.dtype)
    return self.o_proj(out), new_cache


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear(d, f, **kw)
    self.up_proj = Linear(d, f, **kw)
    self.down_proj = Linear(f, d, **kw)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attention(norm(x)), then + mlp(norm(.)); the output [B, T, D] is
  constrained to `sharding.HIDDEN_AXES` (a no-op without a mesh set)."""

  def __init__(self, config: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, **norm)
    self.self_attn = Attention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
    self.mlp = MLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, valid, cache: KVCache | None = None, layer=0, cache_index=0,
               q_slots=None, *, mode: str = "prefill", last_only: bool = False):
    """x [B, T, D] → (out [B, T, D] (last_only: [B, 1, D]), new KVCache or None); the other
    arguments as in `Attention.__call__` (this module holds one layer's weights: the scan body)."""
    h, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, valid, cache, layer, cache_index,
                                  q_slots, mode=mode, last_only=last_only)
    x = (x[:, -1:] if last_only else x) + h
    return sharding.constrain(x + self.mlp(self.post_attention_layernorm(x)), sharding.HIDDEN_AXES), new_cache


class CausalLM(nnx.Module):
  """Llama-family causal LM (see module docstring for shapes). `layers`: one `DecoderLayer` with
  every variable stacked over the L layers, run by one scan. remat: recompute each layer's
  activations in the backward pass of the full forward (`jax.checkpoint` of the scan body).
  scan_layers: one `lax.scan` over the stacked layers (True) or an unrolled loop over their
  slices (False; module docstring)."""

  def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None, remat: bool = False, scan_layers: bool = True):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.dtype = dtype
    self.embed_tokens = nnx.Param(_normal(rngs, (config.vocab_size, config.hidden_size), param_dtype))
    # built layer by layer (the same random draws as L separate layers), then stacked
    self.layers = stack_modules([DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                 for _ in range(config.num_hidden_layers)])
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.remat = remat
    self.scan_layers = scan_layers
    self.lm_head = None if config.tie_word_embeddings else Linear(
        config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  # ------------------------------------------------------------------ pieces
  def embed(self, input_ids: jax.Array) -> jax.Array:
    """input_ids [B, T] int → [B, T, D] (constrained to `sharding.HIDDEN_AXES`)."""
    return sharding.constrain(jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype),
                              sharding.HIDDEN_AXES)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] (already final-normed) → fp32 logits [..., V]."""
    if self.lm_head is None:
      out = jnp.dot(hidden, self.embed_tokens[...].astype(self.dtype).T)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)

  def layer_slice(self, index: int | slice) -> DecoderLayer:
    """`layers` indexed along the layer axis: an int gives one layer's DecoderLayer (variables
    without the layer axis), a slice the stacked layers it selects."""
    graphdef, state = nnx.split(self.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[index], state))

  def run_layers(self, layers: DecoderLayer, first: int, x, cos, sin, valid, cache: KVCache | None = None,
                 cache_index=0, q_slots=None, *, mode: str = "prefill", remat: bool = False):
    """x [B, T, D] through the n stacked `layers` (global layer indices first..first+n-1) by one
    `jax.lax.scan` over their split state (each step merges one layer's slice), the cache (if any)
    carried along, or with `scan_layers` False by an unrolled loop over the same slices; the other
    arguments as in `DecoderLayer.__call__`; remat: `jax.checkpoint` of the step (per layer).
    Returns (x [B, T, D], cache).

    A plain lax.scan over split state rather than `nnx.scan`: the sampler runs the model inside
    `lax.while_loop` on a model merged outside it, and nnx transforms refuse variables of an outer
    trace level."""
    graphdef, state = nnx.split(layers)
    n = jax.tree.leaves(state)[0].shape[0]

    def step(carry, xs):
      layer_state, index = xs
      h, c = carry
      return nnx.merge(graphdef, layer_state)(h, cos, sin, valid, c, index, cache_index, q_slots, mode=mode), None

    if remat:
      step = jax.checkpoint(step)
    if not self.scan_layers:
      carry = (x, cache)
      for i in range(n):
        carry, _ = step(carry, (jax.tree.map(lambda a: a[i], state), first + i))  # noqa: B023
      return carry
    out, _ = jax.lax.scan(step, (x, cache), (state, first + jnp.arange(n, dtype=jnp.int32)))
    return out

  # ------------------------------------------------------------------ full forward
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """input_ids [B, T], attention_mask [B, T] (1 = real token; left or right padding),
    positions [B, T] (default: cumsum(mask) - 1) → logits [B, T, V] fp32."""
    return self.logits(self.hidden_states(input_ids, attention_mask, positions))

  def hidden_states(self, input_ids, attention_mask=None, positions=None) -> jax.Array:
    """Final-normed hidden states [B, T, D] of the full (uncached) forward pass."""
    b, t = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config))
    x, _ = self.run_layers(self.layers, 0, self.embed(input_ids), cos, sin, attention_mask, remat=self.remat)
    return self.norm(x)

  # ------------------------------------------------------------------ KV-cache path
  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """Zeroed `KVCache(keys [L, B, KV, hd, S], values [L, B, KV, S, hd])`."""
    return init_cache(self.config, batch, max_len, dtype or self.dtype)

  def forward_cached(self, input_ids, positions, cache: KVCache, cache_index, kv_mask, *,
                     mode: str = "decode", last_only: bool = False):
    """ids/positions [B, T]; cache: a `KVCache` [L, B, .., S]; kv_mask [B, S] (1 = slot holds a
    real token, including the T being written). Returns (final-normed hidden [B, T, D], new cache).

    mode (static): "decode" attends to the cache slots <= each token's slot; "prefill" (an empty
    cache: `cache_index` must be 0) runs causal self-attention over the T tokens. last_only
    (prefill only): hidden [B, 1, D] of the last position; the last layer then computes queries,
    attention and MLP for that position alone (every layer still writes all T keys/values).
    """
    if mode == "prefill" and not (isinstance(cache_index, int) and cache_index == 0):
      raise ValueError(f"forward_cached: mode='prefill' writes slots 0..T-1, so cache_index must be 0, "
                       f"got {cache_index!r}")
    q_slots = cache_index + jnp.arange(input_ids.shape[1])
    valid = kv_mask.astype(bool)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config))
    x = self.embed(input_ids)
    n = self.config.num_hidden_layers
    scanned = n - 1 if last_only else n   # last_only: the last layer runs apart, on one query
    layers = self.layers if scanned == n else self.layer_slice(slice(0, scanned))
    if scanned:
      x, cache = self.run_layers(layers, 0, x, cos, sin, valid, cache, cache_index, q_slots, mode=mode)
    if last_only:
      x, cache = self.layer_slice(n - 1)(x, cos, sin, valid, cache, n - 1, cache_index, q_slots,
                                         mode=mode, last_only=True)
    return self.norm(x), cache

  def decode(self, input_ids, positions, cache: KVCache, cache_index, kv_mask, *,
             mode: str = "decode"):
    """`forward_cached` followed by `logits`: returns (logits [B, T, V] fp32, new cache)."""
    hidden, cache = self.forward_cached(input_ids, positions, cache, cache_index, kv_mask, mode=mode)
    return self.logits(hidden), cache
