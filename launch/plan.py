r"""Memory plan of a config on its device mesh, built on the host CPU without weights.

  python launch/plan.py --config=configs/esconv_llama3_8b.py [--json_out=plan.json] [--compile=auto]

What it does:
1. Forces as many host CPU devices as the config's mesh has (sets
   XLA_FLAGS=--xla_force_host_platform_device_count=N before jax is initialised; re-executes itself
   if jax was already imported) and builds the (data, fsdp, tensor) mesh of engage_jax.sharding.
2. Builds the agent (or `--model=simulator`) model *abstractly* (nnx.eval_shape: shapes only) and
   its parameter / AdamW-state shardings from the logical rules.
3. Builds the sharded SFT train step (loss-masked CE, AdamW, jax.jit with in/out shardings, donated
   state; activations constrained to the batch sharding; optional per-layer rematerialisation) and
   the sampling prefill / decode steps (KV cache per layer: keys [B, KV, hd, S], values
   [B, KV, S, hd]; donated), lowers them for the full model on ShapeDtypeStructs and, with --compile=auto, compiles reduced-depth copies.
4. Prints per-device memory: parameters, optimizer state (mu + nu), gradients, FSDP transients,
   activations with and without remat, KV cache, against the device HBM (default 16 GiB, TPU v5e),
   says whether training and sampling fit, and which alternatives would.

Where the numbers come from (printed beside each one):
* params / optimizer / gradients / KV cache: exact, from the abstract shapes and their shardings.
* activations: analytic (formula in `activation_bytes`: every saved tensor of a layer, fp32
  attention scores, three fp32 logits-sized arrays). With --compile=auto the formula is cross-checked
  with `compiled.memory_analysis()`: the fp32 forward+backward of one device (local batch, no
  remat) is compiled for 1 and 2 layers and its temp size extrapolated to the model's depth (fp32
  because the CPU backend upcasts bf16 dots and keeps the weight copies alive; remat cannot be
  measured on CPU, whose scheduler recomputes early). If the measurement is larger, the analytic
  activations are scaled up by the ratio.
* the sharded train / prefill steps compiled on CPU for 1-2 layers report a much larger temp
  size: the CPU scheduler is not memory-aware and keeps all-gathered weights alive; shown for
  information only.
The verdict adds the exact terms, the FSDP gather transients and the (calibrated) activations,
against `--usable_fraction` (default 0.9) of HBM.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the plan as JSON to this path.")
_MODEL = flags.DEFINE_enum("model", "agent", ["agent", "simulator"], "Which model of the config to plan.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 0, "Global train batch (0 = config sft.batch_size).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Train sequence length (0 = config data.max_len).")
_SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch", 0, "Sampling batch (0 = search.trees_per_shard * search.k, rounded up to the "
    "data×fsdp extent).")
_SAMPLE_LEN = flags.DEFINE_integer(
    "sample_len", 0, "KV cache length (0 = search.max_prompt_len + search.max_new_tokens).")
_COMPILE = flags.DEFINE_enum(
    "compile", "auto", ["none", "auto", "full"],
    "none: lower only, analytic activations; auto: also compile reduced-depth programs and measure "
    "activations with memory_analysis(); full: also compile the full-depth sharded train step (slow).")
_HBM_GIB = flags.DEFINE_float("hbm_gib", 16.0, "Device memory in GiB (TPU v5e: 16, v5p: 95, H100: 80).")
_USABLE = flags.DEFINE_float("usable_fraction", 0.9, "Fraction of HBM usable by the program.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Devices for a mesh axis of -1 (0 = treat -1 as 1).")

GiB = 2 ** 30
_EXEC_GUARD = "_ENGAGE_PLAN_REEXEC"


# ----------------------------------------------------------------------------- host devices
def mesh_sizes(cfg, devices: int = 0) -> tuple[int, int, int]:
  """(data, fsdp, tensor) from cfg.mesh; a -1 axis takes `devices / rest` (or 1 when devices=0)."""
  sizes = [int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor)]
  if sizes.count(-1) > 1:
    raise ValueError(f"config mesh {sizes}: at most one axis may be -1")
  rest = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    sizes[sizes.index(-1)] = max(1, devices // rest) if devices else 1
  if any(s < 1 for s in sizes):
    raise ValueError(f"config mesh (data, fsdp, tensor)={tuple(sizes)}: sizes must be positive")
  return tuple(sizes)


def ensure_host_devices(n: int) -> None:
  """Makes jax see `n` CPU devices: sets XLA_FLAGS / JAX_PLATFORMS, re-executing if jax is loaded."""
  want = f"--xla_force_host_platform_device_count={n}"
  current = os.environ.get("XLA_FLAGS", "").split()
  if want in current and os.environ.get("JAX_PLATFORMS") == "cpu":
    return
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join([f for f in current if not f.startswith("--xla_force_host_platform_device_count")]
                              + [want])
  env["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:
    if os.environ.get(_EXEC_GUARD):
      raise RuntimeError(f"plan.py: could not set {want} before jax was initialised")
    env[_EXEC_GUARD] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
  os.environ.update(env)


# ----------------------------------------------------------------------------- model
def resolve_model_config(cfg, which: str = "agent"):
  """ModelConfig of cfg.model.<which>: from <path>/config.json when that exists, else the fields."""
  from engage_jax.models import ModelConfig, read_config
  m = cfg.model[which]
  path = str(m.get("path", "") or "")
  if path and os.path.isfile(os.path.join(path, "config.json")):
    return read_config(path), os.path.join(path, "config.json")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  kw = {k: v for k, v in m.items() if k in fields}
  kw.setdefault("vocab_size", int(cfg.tokenizer.vocab_size))
  if kw.get("model_type") == "qwen2":
    kw.setdefault("attention_bias", True)   # as ModelConfig.from_hf_dict: Qwen2 always has q/k/v bias
  src = f"config fields of model.{which}" + (f" ({path} has no config.json)" if path else "")
  return ModelConfig(**kw), src


def abstract_model(mc, dtype, param_dtype):
  """(graphdef, abstract State of ShapeDtypeStructs) of CausalLM(mc) — no memory is allocated."""
  from flax import nnx
  from engage_jax.models import CausalLM
  model = nnx.eval_shape(lambda: CausalLM(mc, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  return nnx.split(model)


def leaves_bytes_per_device(tree, shardings=None) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs), given matching NamedShardings (or none)."""
  import jax
  leaves = jax.tree.leaves(tree)
  shs = jax.tree.leaves(shardings) if shardings is not None else [None] * len(leaves)
  if len(shs) != len(leaves):
    raise ValueError(f"sharding tree has {len(shs)} leaves, values have {len(leaves)}")
  total = 0
  for x, s in zip(leaves, shs):
    shape = s.shard_shape(x.shape) if s is not None else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


def count_params(state) -> int:
  import jax
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- steps
def forward_hidden(model, ids, mask, *, mesh=None, remat: bool = False):
  """Final-normed hidden [B, T, D] like CausalLM.hidden_states, with the activations constrained to
  the batch sharding after every layer (else the partitioner may all-gather them) and optional
  per-layer rematerialisation (only each layer's input is saved for the backward pass)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from engage_jax import sharding as shd
  from engage_jax.models import llama

  def constrain(x):
    return x if mesh is None else jax.lax.with_sharding_constraint(x, shd.batch_sharding(mesh, x.ndim))

  am = mask.astype(bool)
  positions = jnp.maximum(jnp.cumsum(am, axis=-1) - 1, 0)
  cos, sin = llama.rope_cos_sin(positions, llama.rope_inv_freq(model.config))
  x = constrain(model.embed(ids))

  def run(layer_def, layer_state, x, cos, sin, valid):
    return nnx.merge(layer_def, layer_state)(x, cos, sin, valid)[0]

  run_layer = jax.checkpoint(run, static_argnums=(0,)) if remat else run
  for layer in model.layers:
    layer_def, layer_state = nnx.split(layer)
    x = constrain(run_layer(layer_def, layer_state, x, cos, sin, am))
  return model.norm(x)


def masked_ce(logits, ids, loss_mask):
  """Mean next-token CE over target positions: logits [B, T, V] fp32, ids/loss_mask [B, T]."""
  import jax.numpy as jnp
  import optax
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
  w = loss_mask[:, 1:].astype(jnp.float32)
  return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


def make_optimizer(cfg):
  import jax.numpy as jnp
  import optax
  return optax.chain(optax.clip_by_global_norm(float(cfg.sft.grad_clip)),
                     optax.adamw(float(cfg.sft.learning_rate), weight_decay=float(cfg.sft.weight_decay),
                                 mu_dtype=jnp.float32))


def make_loss(graphdef, mesh=None, remat=False):
  import jax
  from flax import nnx

  def loss_fn(params, ids, mask, loss_mask):
    model = nnx.merge(graphdef, params)
    hidden = forward_hidden(model, ids, mask, mesh=mesh, remat=remat)
    logits = model.logits(hidden)
    if mesh is not None:
      from engage_jax import sharding as shd
      logits = jax.lax.with_sharding_constraint(logits, shd.batch_sharding(mesh, 3))
    return masked_ce(logits, ids, loss_mask)
  return loss_fn


def build_train_step(graphdef, abs_params, mesh, tx, remat: bool):
  """jit'd `step(params, opt_state, ids, mask, loss_mask) -> (params, opt_state, loss)` with
  shardings; returns (step, abstract opt_state, (param, opt, batch) shardings)."""
  import jax
  import optax
  from jax.sharding import NamedSharding
  from engage_jax import sharding as shd

  p_sh = shd.state_sharding(mesh, abs_params)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  repl = shd.replicated(mesh)
  o_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, p_sh, transform_non_params=lambda _: repl,
                               is_leaf=lambda x: isinstance(x, NamedSharding))
  b_sh = shd.batch_sharding(mesh, 2)
  loss_fn = make_loss(graphdef, mesh, remat)

  def step(params, opt_state, ids, mask, loss_mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, mask, loss_mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  jitted = jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, b_sh, b_sh), out_shardings=(p_sh, o_sh, repl),
                   donate_argnums=(0, 1))
  return jitted, abs_opt, (p_sh, o_sh, b_sh)


def lora_config(cfg, which: str):
  """The models.lora.LoraConfig of cfg.model.<which>.lora (rank 0 when the key is absent)."""
  from engage_jax.models import lora
  return lora.LoraConfig.from_any(cfg.model[which].get("lora"))


def build_lora_train_step(cfg, mc, lcfg, mesh, dtype, param_dtype, train_batch: int, seq_len: int):
  """The *real* LoRA train step (train.loop.make_train_step over train.loop.lm_loss_fn, the
  pipeline's TrainConfig and optimizer, model.remat as configured) on abstract inputs. Returns
  (jitted step, abstract args (adapter, opt_state, batch [A, B, T], frozen), (adapter, opt, frozen)
  shardings)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from engage_jax import pipeline, sharding as shd
  from engage_jax.models import CausalLM, lora
  from engage_jax.train import loop

  def build():
    m = CausalLM(mc, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    m.remat = bool(cfg.model.remat)
    return lora.apply_lora(m, dataclasses.replace(lcfg, path=""), rngs=nnx.Rngs(1))

  model = nnx.eval_shape(build)
  graphdef, adapter, frozen, rest = lora.split_trainable(model)
  tcfg = pipeline.train_config(cfg, cfg.sft, num_steps=max(1, int(cfg.sft.agent_steps)), max_len=seq_len,
                               batch_size=train_batch)
  tx, schedule = loop.make_optimizer(tcfg, tcfg.num_steps)
  a_sh, f_sh = shd.state_sharding(mesh, adapter), shd.state_sharding(mesh, frozen)
  abs_opt = jax.eval_shape(tx.init, adapter)
  o_sh = loop.opt_state_sharding(tx, abs_opt, a_sh, mesh)
  accum = int(tcfg.grad_accum_steps)
  x = jax.ShapeDtypeStruct((accum, train_batch, seq_len), jnp.int32)
  batch = {"input_ids": x, "loss_mask": x, "attention_mask": x}
  step = loop.make_train_step(loop.lm_loss_fn(graphdef, rest), tx, schedule, mesh, a_sh, o_sh, batch,
                              frozen_sharding=f_sh)
  return step, (adapter, abs_opt, batch, frozen), (a_sh, o_sh, f_sh)


def cache_sharding(mesh, mc, batch: int, length: int):
  """Per-layer (keys, values) NamedShardings of the KV cache (`llama.cache_shapes`)."""
  from jax.sharding import NamedSharding
  from engage_jax import sharding as shd
  from engage_jax.models import llama
  k_shape, v_shape = llama.cache_shapes(mc, batch, length)
  k = NamedSharding(mesh, shd.logical_to_spec(mesh, llama.CACHE_KEY_AXES, k_shape))
  v = NamedSharding(mesh, shd.logical_to_spec(mesh, llama.CACHE_VALUE_AXES, v_shape))
  return tuple((k, v) for _ in range(mc.num_hidden_layers))


def build_sampling_steps(graphdef, abs_params, mesh, mc, batch: int, length: int, prompt_len: int, dtype):
  """jit'd prefill(params, ids [B, P], positions, cache, kv_mask [B, S]) -> (last logits [B, V], cache)
  and decode(params, ids [B, 1], positions, cache, index, kv_mask) -> (logits [B, V], cache), with the
  cache donated; plus their abstract arguments."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from engage_jax import sharding as shd

  p_sh = shd.state_sharding(mesh, abs_params)
  c_sh = cache_sharding(mesh, mc, batch, length)
  b2, repl = shd.batch_sharding(mesh, 2), shd.replicated(mesh)
  from engage_jax.models import llama
  k_shape, v_shape = llama.cache_shapes(mc, batch, length)
  abs_cache = tuple((jax.ShapeDtypeStruct(k_shape, dtype), jax.ShapeDtypeStruct(v_shape, dtype))
                    for _ in range(mc.num_hidden_layers))

  def prefill(params, ids, positions, cache, kv_mask):
    model = nnx.merge(graphdef, params)
    hidden, cache = model.forward_cached(ids, positions, cache, 0, kv_mask)
    return model.logits(hidden[:, -1]), cache

  def decode(params, ids, positions, cache, index, kv_mask):
    model = nnx.merge(graphdef, params)
    hidden, cache = model.forward_cached(ids, positions, cache, index, kv_mask)
    return model.logits(hidden[:, -1]), cache

  out_l = shd.batch_sharding(mesh, 2)
  pre = jax.jit(prefill, in_shardings=(p_sh, b2, b2, c_sh, b2), out_shardings=(out_l, c_sh), donate_argnums=(3,))
  dec = jax.jit(decode, in_shardings=(p_sh, b2, b2, c_sh, repl, b2), out_shardings=(out_l, c_sh),
                donate_argnums=(3,))
  i32 = jnp.int32
  pre_args = (abs_params, jax.ShapeDtypeStruct((batch, prompt_len), i32), jax.ShapeDtypeStruct((batch, prompt_len), i32),
              abs_cache, jax.ShapeDtypeStruct((batch, length), i32))
  dec_args = (abs_params, jax.ShapeDtypeStruct((batch, 1), i32), jax.ShapeDtypeStruct((batch, 1), i32), abs_cache,
              jax.ShapeDtypeStruct((), i32), jax.ShapeDtypeStruct((batch, length), i32))
  return (pre, pre_args), (dec, dec_args), c_sh, abs_cache


# ----------------------------------------------------------------------------- analytic terms
def activation_bytes(mc, local_batch: int, seq_len: int, act_bytes: int, remat: bool) -> dict:
  """Analytic activation memory of one device's forward+backward of the train step.

  Per token and layer the backward keeps (act_bytes each): norm inputs/outputs (4d), residual and
  attention / o_proj outputs (2d), q, k, v before and after RoPE (2(H + 2KV)hd), the MLP's gate, up,
  silu and product (4f); plus attention scores in fp32 and probabilities (6 H T bytes per token).
  With remat only each layer's input (d) is kept, plus one layer recomputed at a time. The logits
  head keeps about three fp32 [tokens, V] arrays (logits, softmax, dlogits).
  """
  d, f, v, L = mc.hidden_size, mc.intermediate_size, mc.vocab_size, mc.num_hidden_layers
  h, kv, hd = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
  tokens = local_batch * seq_len
  per_layer = tokens * (act_bytes * (6 * d + 2 * (h + 2 * kv) * hd + 4 * f) + 6 * h * seq_len)
  logits = tokens * v * 12
  layers = (L * tokens * d * act_bytes + per_layer) if remat else L * per_layer
  return {"layers": int(layers), "logits": int(logits), "total": int(layers + logits),
          "per_layer_full": int(per_layer)}


def fsdp_transient_bytes(mc, fsdp: int, tensor: int, param_bytes: int) -> int:
  """FSDP all-gather transients: the largest gathered unit (one layer, the embedding or the LM head)
  and its unreduced gradient, in the parameter dtype (0 when nothing is sharded over fsdp)."""
  if fsdp <= 1:
    return 0
  d, f, v = mc.hidden_size, mc.intermediate_size, mc.vocab_size
  h, kv, hd = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
  layer = d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f
  return int(2 * max(layer, v * d) * param_bytes / tensor)


def _gib(x: float) -> float:
  return round(x / GiB, 3)


def _alternatives(mc, train_batch, seq_len, act_bytes, hbm, usable, devices0, tensor,
                  calibration=1.0) -> list[dict]:
  """Analytic fit of (devices, param dtype, remat, local batch) variants, ordered from the fewest
  devices and least intrusive change; uniform sharding assumed, mu + nu kept in fp32 (8 B/param).
  A smaller local batch keeps the global batch with grad_accum."""
  n = mc.num_params
  out = []
  for devices in sorted({devices0, 16, 32, 64, 128, 256}):
    if devices < devices0:
      continue
    fsdp = devices // tensor
    for local_b in sorted({max(1, math.ceil(train_batch / fsdp)), 1}, reverse=True):
      for pname, pbytes in (("float32", 4), ("bfloat16", 2)):
        for remat in (False, True):
          params = n * pbytes / devices
          act = activation_bytes(mc, local_b, seq_len, act_bytes, remat)["total"] * calibration
          total = params * 2 + n * 8 / devices + fsdp_transient_bytes(mc, fsdp, tensor, pbytes) + act
          out.append({"devices": devices, "fsdp": fsdp, "tensor": tensor, "param_dtype": pname, "remat": remat,
                      "local_batch": local_b, "total_gib": _gib(total), "fits": total <= usable * hbm})
  return out


def _measure_activations(mc, dtype, local_batch, seq_len, remat, layers=(1, 2)) -> dict:
  """temp bytes of one device's fwd+bwd (unsharded, local batch) compiled for `layers` depths,
  extrapolated linearly to mc.num_hidden_layers. Parameters use the compute dtype (no casts)."""
  import jax
  import jax.numpy as jnp
  temps = []
  for L in layers:
    m = dataclasses.replace(mc, num_hidden_layers=L)
    gd, st = abstract_model(m, dtype, dtype)
    fn = jax.jit(jax.value_and_grad(make_loss(gd, None, remat)))
    ids = jax.ShapeDtypeStruct((local_batch, seq_len), jnp.int32)
    c = fn.lower(st, ids, ids, ids).compile()
    temps.append(c.memory_analysis().temp_size_in_bytes)
  slope = (temps[1] - temps[0]) / (layers[1] - layers[0])
  total = temps[0] + slope * (mc.num_hidden_layers - layers[0])
  return {"temp_bytes_by_layers": dict(zip(layers, temps)), "per_layer": int(slope), "total": int(total)}


def _mem_stats(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                          "alias_size_in_bytes", "temp_size_in_bytes")}


# ----------------------------------------------------------------------------- the plan
def make_plan(cfg, *, which="agent", train_batch=0, seq_len=0, sample_batch=0, sample_len=0,
              compile_mode="auto", hbm_gib=16.0, usable_fraction=0.9, devices=0, log=print) -> dict:
  import jax
  import jax.numpy as jnp
  from engage_jax import sharding as shd

  t_start = time.time()
  data, fsdp, tensor = mesh_sizes(cfg, devices)
  n_dev = data * fsdp * tensor
  if len(jax.devices()) < n_dev:
    raise RuntimeError(f"need {n_dev} devices for mesh {(data, fsdp, tensor)}, jax sees {len(jax.devices())}")
  mesh = shd.make_mesh(data, fsdp, tensor, devices=jax.devices()[:n_dev])
  mc, source = resolve_model_config(cfg, which)
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  act_bytes = dtype.itemsize
  hbm = hbm_gib * GiB
  train_batch = train_batch or int(cfg.sft.batch_size)
  seq_len = seq_len or int(cfg.data.max_len)
  div = shd.batch_divisor(mesh)
  if not sample_batch:
    sample_batch = int(cfg.search.trees_per_shard) * int(cfg.search.k)
    sample_batch = math.ceil(sample_batch / div) * div
  sample_len = sample_len or int(cfg.search.max_prompt_len) + int(cfg.search.max_new_tokens)
  prompt_len = min(int(cfg.search.max_prompt_len), sample_len)
  shd.check_batch(mesh, train_batch, "train batch")
  shd.check_batch(mesh, sample_batch, "sampling batch")
  local_b = train_batch // div

  graphdef, abs_params = abstract_model(mc, dtype, param_dtype)
  n_params = count_params(abs_params)
  log(f"model: {mc.model_type} from {source}")
  log(f"  parameters: {n_params:,} ({n_params / 1e9:.3f}e9); ModelConfig.num_params={mc.num_params:,}")
  log(f"mesh (data, fsdp, tensor) = ({data}, {fsdp}, {tensor}) on {n_dev} host CPU devices; "
      f"HBM {hbm_gib:g} GiB/device, {usable_fraction:.0%} usable")
  log(f"dtypes: compute {dtype.name}, params {param_dtype.name}; train batch {train_batch} × {seq_len} "
      f"(local {local_b}); sampling batch {sample_batch}, cache length {sample_len}")

  # -- train step (exact terms from shapes and shardings)
  tx = make_optimizer(cfg)
  lowered, timings, compiled_stats = {}, {}, {}
  t = time.time()
  ids = jax.ShapeDtypeStruct((train_batch, seq_len), jnp.int32)
  lcfg = lora_config(cfg, which)
  lora_info = None
  if lcfg.enabled:  # the real step: only the adapter is trained / in the optimizer state
    lstep, largs, (a_sh, lo_sh, f_sh) = build_lora_train_step(cfg, mc, lcfg, mesh, dtype, param_dtype,
                                                             train_batch, seq_len)
    lowered["train_lora"] = lstep.lower(*largs)
    abs_opt = largs[1]
    adapter_b = leaves_bytes_per_device(largs[0], a_sh)
    frozen_b = leaves_bytes_per_device(largs[3], f_sh)
    params_b, opt_b, grads_b = frozen_b + adapter_b, leaves_bytes_per_device(abs_opt, lo_sh), adapter_b
    transient_b = fsdp_transient_bytes(mc, fsdp, tensor, param_dtype.itemsize) // 2  # no base-weight gradient
    lora_info = {"rank": lcfg.rank, "alpha": lcfg.alpha, "targets": list(lcfg.targets),
                 "adapter_params": count_params(largs[0]), "adapter_bytes": adapter_b, "frozen_bytes": frozen_b,
                 "remat": bool(cfg.model.remat), "grad_accum": int(largs[2]["input_ids"].shape[0]),
                 "step": "train.loop.make_train_step(train.loop.lm_loss_fn) (the real train step)"}
  else:
    step_remat, abs_opt, (p_sh, o_sh, _) = build_train_step(graphdef, abs_params, mesh, tx, remat=True)
    lowered["train_remat"] = step_remat.lower(abs_params, abs_opt, ids, ids, ids)
    step_plain, _, _ = build_train_step(graphdef, abs_params, mesh, tx, remat=False)
    lowered["train"] = step_plain.lower(abs_params, abs_opt, ids, ids, ids)
    params_b = leaves_bytes_per_device(abs_params, p_sh)
    opt_b = leaves_bytes_per_device(abs_opt, o_sh)
    grads_b = params_b
    transient_b = fsdp_transient_bytes(mc, fsdp, tensor, param_dtype.itemsize)
  timings["lower_train"] = round(time.time() - t, 2)
  act = {r: activation_bytes(mc, local_b, seq_len, act_bytes, r) for r in (False, True)}
  if lcfg.enabled:  # + each adapter's x·A [tokens, r] per target and layer
    extra = local_b * seq_len * lcfg.rank * len(lcfg.targets) * act_bytes
    for r in (False, True):
      act[r] = dict(act[r], total=act[r]["total"] + extra * (1 if r else mc.num_hidden_layers))
  measured = {}
  calibration = 1.0
  if compile_mode in ("auto", "full"):
    t = time.time()
    measured = _measure_activations(mc, jnp.dtype(jnp.float32), local_b, seq_len, remat=False)
    analytic32 = activation_bytes(mc, local_b, seq_len, 4, remat=False)["total"]
    measured["analytic_fp32"] = analytic32
    measured["ratio_measured_to_analytic"] = round(measured["total"] / max(analytic32, 1), 4)
    calibration = max(1.0, measured["total"] / max(analytic32, 1))
    timings["measure_activations"] = round(time.time() - t, 2)
    t = time.time()
    small = dataclasses.replace(mc, num_hidden_layers=min(2, mc.num_hidden_layers))
    if lcfg.enabled:
      st_s, args_s, _ = build_lora_train_step(cfg, small, lcfg, mesh, dtype, param_dtype, train_batch, seq_len)
      compiled_stats["train_lora_sharded_%dlayers" % small.num_hidden_layers] = _mem_stats(
          st_s.lower(*args_s).compile())
    else:
      gd_s, ps_s = abstract_model(small, dtype, param_dtype)
      st_s, opt_s, _ = build_train_step(gd_s, ps_s, mesh, tx, remat=True)
      compiled_stats["train_remat_sharded_%dlayers" % small.num_hidden_layers] = _mem_stats(
          st_s.lower(ps_s, opt_s, ids, ids, ids).compile())
    timings["compile_train_sharded_small"] = round(time.time() - t, 2)
  if compile_mode == "full":
    t = time.time()
    full_key = "train_lora" if lcfg.enabled else "train_remat"
    compiled_stats[full_key + "_sharded_full"] = _mem_stats(lowered[full_key].compile())
    timings["compile_train_sharded_full"] = round(time.time() - t, 2)

  def act_total(r):
    return int(act[r]["total"] * calibration)

  fixed = params_b + opt_b + grads_b + transient_b
  train = {"params": params_b, "optimizer_mu_nu": opt_b, "gradients": grads_b, "fsdp_transient": transient_b}
  totals = {("remat" if r else "no_remat"): fixed + act_total(r) for r in (False, True)}
  fits = {k: v <= usable_fraction * hbm for k, v in totals.items()}

  # -- sampling (params in the compute dtype)
  t = time.time()
  gd_c, ps_c = abstract_model(mc, dtype, dtype)
  (pre, pre_args), (dec, dec_args), c_sh, abs_cache = build_sampling_steps(
      gd_c, ps_c, mesh, mc, sample_batch, sample_len, prompt_len, dtype)
  lowered["prefill"] = pre.lower(*pre_args)
  lowered["decode"] = dec.lower(*dec_args)
  timings["lower_sampling"] = round(time.time() - t, 2)
  if compile_mode in ("auto", "full"):
    t = time.time()
    small = dataclasses.replace(mc, num_hidden_layers=1)
    gd_s, ps_s = abstract_model(small, dtype, dtype)
    (pre_s, pre_a), (dec_s, dec_a), _, _ = build_sampling_steps(gd_s, ps_s, mesh, small, sample_batch, sample_len,
                                                                prompt_len, dtype)
    compiled_stats["prefill_sharded_1layer"] = _mem_stats(pre_s.lower(*pre_a).compile())
    compiled_stats["decode_sharded_1layer"] = _mem_stats(dec_s.lower(*dec_a).compile())
    timings["compile_sampling_small"] = round(time.time() - t, 2)
  sample_params_b = leaves_bytes_per_device(ps_c, shd.state_sharding(mesh, ps_c))
  kv_b = leaves_bytes_per_device(abs_cache, c_sh)
  sample_local_b = sample_batch // div
  prefill_transient = int(activation_bytes(mc, sample_local_b, prompt_len, act_bytes, False)["per_layer_full"]
                          + fsdp_transient_bytes(mc, fsdp, tensor, dtype.itemsize) / 2)
  sampling_total = sample_params_b + kv_b + prefill_transient
  sampling = {"params": sample_params_b, "kv_cache": kv_b, "prefill_transient": prefill_transient,
              "total": sampling_total, "fits": sampling_total <= usable_fraction * hbm}

  alternatives = [] if lcfg.enabled else _alternatives(mc, train_batch, seq_len, act_bytes, hbm, usable_fraction,
                                                      n_dev, tensor, calibration)
  suggestion = next((a for a in alternatives if a["fits"]), None)

  # -- print
  def g(x):
    return f"{x / GiB:9.3f} GiB" if x >= 2 ** 24 else f"{x / 2 ** 20:9.3f} MiB"
  log("\nper-device memory, training (SFT step, AdamW" + (", LoRA" if lcfg.enabled else "") + "):")
  if lcfg.enabled:
    log(f"  LoRA rank {lcfg.rank}, alpha {lcfg.alpha:g} on {', '.join(lcfg.targets)}: "
        f"{lora_info['adapter_params']:,} adapter parameters (fp32) trained, base frozen in {param_dtype.name}; "
        f"real train step, grad_accum {lora_info['grad_accum']}, remat {lora_info['remat']}")
    log(f"  {'frozen base params (' + param_dtype.name + ', exact)':<40s}{g(lora_info['frozen_bytes'])}")
    log(f"  {'adapter params (float32, exact)':<40s}{g(lora_info['adapter_bytes'])}")
  opt_dtypes = ", ".join(sorted({x.dtype.name for x in jax.tree.leaves(abs_opt) if x.ndim}))
  log(f"  {'params (' + param_dtype.name + ', exact)':<40s}{g(params_b)}")
  log(f"  {'optimizer mu+nu (' + opt_dtypes + ', exact)':<40s}{g(opt_b)}")
  grad_dtype = "float32 adapter" if lcfg.enabled else param_dtype.name
  log(f"  {'gradients (' + grad_dtype + ', exact)':<40s}{g(grads_b)}")
  log(f"  {'FSDP gather transients (analytic)':<40s}{g(transient_b)}")
  for r in (False, True):
    name = "activations " + ("with remat" if r else "without remat") + " (analytic)"
    log(f"  {name:<40s}{g(act_total(r))}  (logits {act[r]['logits'] / GiB:.2f} GiB)")
  if measured:
    log(f"  cross-check: fp32 fwd+bwd of one device compiled for 1, 2 layers, memory_analysis() temp "
        f"extrapolated to {mc.num_hidden_layers}: {g(measured['total'])} vs analytic fp32 "
        f"{g(measured['analytic_fp32'])} (ratio {measured['ratio_measured_to_analytic']:.3f}; "
        f"analytic scaled by {calibration:.3f})")
    log("  (measured in fp32 because the CPU backend upcasts bf16 dots and keeps the weight copies; "
        "remat is not measurable on CPU, whose scheduler recomputes early)")
  for k in ("no_remat", "remat"):
    log(f"  {'TOTAL ' + k:<40s}{g(totals[k])}  -> {'fits' if fits[k] else 'does NOT fit'} "
        f"in {usable_fraction:.0%} of {hbm_gib:g} GiB")
  log("\nper-device memory, sampling (prefill/decode, params in compute dtype):")
  log(f"  {'params (' + dtype.name + ', exact)':<40s}{g(sample_params_b)}")
  log(f"  {'KV cache ' + str(sample_batch) + ' x ' + str(sample_len) + ' (exact)':<40s}{g(kv_b)}")
  log(f"  {'prefill transient (analytic)':<40s}{g(prefill_transient)}")
  log(f"  {'TOTAL':<40s}{g(sampling_total)}  -> {'fits' if sampling['fits'] else 'does NOT fit'}")
  if compiled_stats:
    log("\ncompiled on the CPU backend (memory_analysis per device; CPU keeps all gathered weights alive, "
        "so temp is an upper bound, for information):")
    for k, v in compiled_stats.items():
      log(f"  {k}: " + ", ".join(f"{n.replace('_size_in_bytes', '')} {b / GiB:.3f} GiB" for n, b in v.items()))
  verdict_train = ("fits without remat" if fits["no_remat"] else "fits with remat" if fits["remat"]
                   else "does NOT fit")
  log(f"\nverdict: training {verdict_train}; sampling {'fits' if sampling['fits'] else 'does NOT fit'} "
      f"on a {n_dev}-device mesh of {hbm_gib:g} GiB devices.")
  if not (fits["no_remat"] or fits["remat"]):
    if suggestion:
      log(f"  first analytic alternative that fits: {suggestion['devices']} devices (fsdp={suggestion['fsdp']}), "
          f"{suggestion['param_dtype']} params, remat={suggestion['remat']}, local batch {suggestion['local_batch']} "
          f"({suggestion['total_gib']:.2f} GiB)")
    else:
      log("  no analytic alternative up to 256 devices fits; use tensor parallelism or a smaller batch")
  fitting_here = [a for a in alternatives if a["devices"] == n_dev and a["fits"]]
  if fitting_here:
    log("  fits on this mesh (analytic): " + "; ".join(
        f"{a['param_dtype']} params{' + remat' if a['remat'] else ''}, local batch {a['local_batch']}: "
        f"{a['total_gib']:.2f} GiB" for a in fitting_here))
  log(f"lowered: {', '.join(lowered)} (full depth); plan took {time.time() - t_start:.1f} s")

  return {
      "model": {"source": source, "model_type": mc.model_type, "num_params": n_params,
                "num_params_config": mc.num_params, "config": dataclasses.asdict(mc)},
      "mesh": {"data": data, "fsdp": fsdp, "tensor": tensor, "devices": n_dev},
      "dtypes": {"compute": dtype.name, "params": param_dtype.name},
      "hbm_gib": hbm_gib, "usable_fraction": usable_fraction,
      "train": {"batch": train_batch, "seq_len": seq_len, "local_batch": local_b,
                "bytes": {**train, "activations_no_remat": act_total(False), "activations_remat": act_total(True)},
                "activations_analytic": {("remat" if r else "no_remat"): act[r] for r in act},
                "activations_measured_fp32_no_remat": measured,
                "activations_source": ("analytic x max(1, measured/analytic) from the fp32 memory_analysis() "
                                       "cross-check" if measured else "analytic"),
                "total_bytes": totals, "total_gib": {k: _gib(v) for k, v in totals.items()}, "fits": fits},
      "sampling": {"batch": sample_batch, "cache_len": sample_len, "prompt_len": prompt_len, "bytes": sampling,
                   "total_gib": _gib(sampling_total)},
      "compiled_cpu": compiled_stats, "timings_s": timings, "lowered": list(lowered),
      "verdict": {"train": verdict_train, "sampling_fits": sampling["fits"], "suggestion": suggestion},
      "alternatives": alternatives,
      "lora": lora_info,
  }


def _check(cfg, devices: int) -> None:
  """The config's values (not its paths or data files: a plan needs neither), before any work."""
  from engage_jax import config_check
  from engage_jax.errors import InputErrors
  skip = re.compile(r"config\.(model\.\w+\.path|tokenizer\.path|data\.path|data\.source)$")
  found = [p for p in config_check.problems(cfg, devices=devices, load_data=False) if not skip.match(p.where)]
  if found:
    raise InputErrors(found)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config=configs/esconv_llama3_8b.py")
  data, fsdp, tensor = mesh_sizes(cfg, _DEVICES.value)
  _check(cfg, data * fsdp * tensor)
  ensure_host_devices(data * fsdp * tensor)
  plan = make_plan(cfg, which=_MODEL.value, train_batch=_TRAIN_BATCH.value, seq_len=_SEQ_LEN.value,
                   sample_batch=_SAMPLE_BATCH.value, sample_len=_SAMPLE_LEN.value, compile_mode=_COMPILE.value,
                   hbm_gib=_HBM_GIB.value, usable_fraction=_USABLE.value, devices=_DEVICES.value)
  if _JSON_OUT.value:
    path = _JSON_OUT.value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(plan, f, indent=2, default=str)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from engage_jax import cli
  cli.run_app(main)
