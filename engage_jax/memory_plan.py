"""Memory plan of a config on its device mesh: the trainer's and the sampler's programs lowered on
abstract inputs (no weights), and their per-device bytes against the device HBM.

    plan = make_plan(cfg, compile_mode="none")     # jax must already see the mesh's devices
    print(format_plan(plan)); json.dump(plan.to_json(), f)

The train step is the trainer's own: `train.loop.make_optimizer` of the config's `sft` section
(`build.train_config`), `train.loop.lm_loss_fn`, `train.loop.make_train_step` with the loop's
parameter / optimizer-state shardings, on the model as `build.new_model` builds it (dtypes,
`model.remat`, LoRA adapters; abstract, `nnx.eval_shape`) and a batch `[grad_accum, B, T]` of
`jax.ShapeDtypeStruct`s. It is lowered with remat off ("train") and on ("train_remat"), or, with
LoRA, as configured ("train_lora"). Sampling: the sampler's own jitted cores, as the search's
speakers run them (`sampling_programs`): "generate" (`sampling.core_program`: prefill + the
while-loop decode of `sampling.generate`, the KV cache allocated inside) and, with
`rollout.kv_cache`, "generate_chat_cache" (`chat_cache.core_program`: a turn that continues kept
prefixes), on the model as `build.load_model` builds it (params in `param_dtype`, `remat`) and
unsharded, as the speakers hold it. The sampling figures are those of the program (of the two)
that needs the most: the KV caches it holds at once (`KVCache` keys [L, B, KV, hd, S], values
[L, B, KV, S, hd], S = the bucketed kept + prompt + new slots) and its prefill transient.

Where the numbers come from (`format_plan` prints it beside each one):
* params / optimizer / gradients / KV cache: exact, from the abstract shapes and their shardings.
* activations: analytic (`activation_bytes`: every saved tensor of a layer, fp32 attention scores,
  three fp32 logits-sized arrays). With compile_mode "auto" / "full" the formula is cross-checked
  with `compiled.memory_analysis()`: the fp32 forward+backward of the trainer's loss on one device
  (local batch, no remat) is compiled for 1 and 2 layers and its temp size extrapolated to the
  model's depth (fp32 because the CPU backend upcasts bf16 dots and keeps the weight copies alive;
  remat cannot be measured on CPU, whose scheduler recomputes early). If the measurement is
  larger, the analytic activations are scaled up by the ratio.
* the sharded train step and the sampler's cores compiled on CPU for 1-2 layers report a much
  larger temp size (the CPU scheduler keeps all-gathered weights alive); for information only.
The verdict adds the exact terms, the FSDP gather transients and the (calibrated) activations,
against `usable_fraction` of HBM.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from engage_jax import build, chat_cache, sampling
from engage_jax import sharding as shd
from engage_jax.models import CausalLM, ModelConfig, lora, read_config
from engage_jax.train import loop
from engage_jax.sampling import SamplingParams

GiB = 2 ** 30


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class Plan:
  """Per-device bytes of training (the SFT step) and sampling, and the settings they are for.

  params / optimizer_state / gradients / fsdp_transient: the train step's exact (analytic for the
  transient) terms; activations and train_total: {"no_remat", "remat"}; kv_cache,
  sampling_params, prefill_transient, sampling_total: the sampler's, on the one device that holds
  its model (details["sampling"]: which program, its shapes, the bytes of each). fits: training (with or
  without remat) and sampling both fit in usable_fraction × hbm_bytes. details: everything else
  the JSON holds (analytic breakdown, measurements, compiled stats, alternatives, timings).
  """
  settings: dict
  params: int
  optimizer_state: int
  gradients: int
  fsdp_transient: int
  activations: dict
  train_total: dict
  train_fits: dict
  sampling_params: int
  kv_cache: int
  prefill_transient: int
  sampling_total: int
  sampling_fits: bool
  hbm_bytes: int
  fits: bool
  details: dict

  def to_json(self) -> dict:
    """The plan as `launch/plan.py --json_out` writes it."""
    s, d = self.settings, self.details
    return {
        "model": d["model"], "mesh": s["mesh"], "dtypes": s["dtypes"],
        "hbm_gib": s["hbm_gib"], "usable_fraction": s["usable_fraction"],
        "train": {"batch": s["train_batch"], "seq_len": s["seq_len"], "local_batch": s["local_batch"],
                  "bytes": {"params": self.params, "optimizer_mu_nu": self.optimizer_state,
                            "gradients": self.gradients, "fsdp_transient": self.fsdp_transient,
                            "activations_no_remat": self.activations["no_remat"],
                            "activations_remat": self.activations["remat"]},
                  "activations_analytic": d["activations_analytic"],
                  "activations_measured_fp32_no_remat": d["measured"],
                  "activations_source": ("analytic x max(1, measured/analytic) from the fp32 memory_analysis() "
                                         "cross-check" if d["measured"] else "analytic"),
                  "total_bytes": self.train_total, "total_gib": {k: _gib(v) for k, v in self.train_total.items()},
                  "fits": self.train_fits},
        "sampling": {"batch": s["sample_batch"], "cache_len": s["sample_len"], "prompt_len": s["prompt_len"],
                     "bytes": {"params": self.sampling_params, "kv_cache": self.kv_cache,
                               "prefill_transient": self.prefill_transient, "total": self.sampling_total,
                               "fits": self.sampling_fits},
                     "total_gib": _gib(self.sampling_total), "program": d["sampling"]},
        "compiled_cpu": d["compiled"], "timings_s": d["timings"], "lowered": d["lowered"],
        "verdict": {"train": d["verdict_train"], "sampling_fits": self.sampling_fits,
                    "suggestion": d["suggestion"]},
        "alternatives": d["alternatives"],
        "lora": d["lora"],
    }


# ----------------------------------------------------------------------------- model
def resolve_model_config(cfg, which: str = "agent"):
  """(ModelConfig of cfg.model.<which>, where it came from): <path>/config.json when that exists,
  else the config's fields."""
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


def lora_config(cfg, which: str):
  """The models.lora.LoraConfig of cfg.model.<which>.lora (rank 0 when the key is absent)."""
  return lora.LoraConfig.from_any(cfg.model[which].lora)


def abstract_model(mc, dtype, param_dtype, *, remat: bool = False, lcfg=None) -> nnx.Module:
  """CausalLM(mc) of ShapeDtypeStructs (nnx.eval_shape: no memory), with `remat` and, when
  `lcfg` is enabled, freshly initialised LoRA adapters (as build.new_model builds it)."""

  def build():
    m = CausalLM(mc, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), remat=remat)
    if lcfg is not None and lcfg.enabled:
      m = lora.apply_lora(m, dataclasses.replace(lcfg, path=""), rngs=nnx.Rngs(1))
    return m

  return nnx.eval_shape(build)


def leaves_bytes_per_device(tree, shardings=None) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs), given matching NamedShardings (or none)."""
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
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- programs
@dataclasses.dataclass
class TrainProgram:
  """The trainer's jitted step and its abstract arguments (params, opt_state, batch [A, B, T], and
  frozen with LoRA) with their shardings (params, opt_state, frozen or None)."""
  step: Any
  args: tuple
  shardings: tuple

  def lower(self):
    return self.step.lower(*self.args)


def train_program(cfg, mc, mesh, *, which: str = "agent", train_batch: int, seq_len: int,
                  remat: bool, dtype, param_dtype) -> TrainProgram:
  """The SFT train step exactly as `train.sft.train_sft` builds it for `cfg` (train.loop's
  optimizer, loss and step; batch_size = train_batch per micro-batch, the config's grad_accum,
  the batch keys and dtypes of `data.sft.BatchIterator`,
  the schedule over max(1, sft.agent_steps) updates), on abstract inputs."""

  model = abstract_model(mc, dtype, param_dtype, remat=remat, lcfg=lora_config(cfg, which))
  graphdef, params, frozen, rest = lora.split_trainable(model)
  tcfg = build.train_config(cfg, cfg.sft, steps=max(1, int(cfg.sft.agent_steps)), max_len=seq_len,
                               batch_size=train_batch)
  tx, schedule = loop.make_optimizer(tcfg, tcfg.steps)
  p_sh = shd.state_sharding(mesh, params)
  abs_opt = jax.eval_shape(tx.init, params)
  o_sh = loop.opt_state_sharding(tx, abs_opt, p_sh, mesh)
  f_sh = None if frozen is None else shd.state_sharding(mesh, frozen)
  a = int(tcfg.grad_accum)
  x = jax.ShapeDtypeStruct((a, train_batch, seq_len), jnp.int32)                     # [A, B, T]
  batch = {"input_ids": x, "loss_mask": x, "attention_mask": x,                       # as data.sft.BatchIterator
           "row_weight": jax.ShapeDtypeStruct((a, train_batch), jnp.float32)}        # [A, B]
  step = loop.make_train_step(loop.lm_loss_fn(graphdef, rest), tx, schedule, mesh, p_sh, o_sh, batch,
                              frozen_sharding=f_sh)
  args = (params, abs_opt, batch) + (() if frozen is None else (frozen,))
  return TrainProgram(step, args, (p_sh, o_sh, f_sh))


def sampler_state(mc, dtype, param_dtype, remat: bool = False):
  """(graphdef, abstract state) of the model as the search's speakers hold it: `build.load_model`
  (params in `param_dtype`, computing in `dtype`, `remat`), unsharded (the speakers' models are not
  placed on the mesh, and `rollout.Speaker` places no batch)."""
  return nnx.split(abstract_model(mc, dtype, param_dtype, remat=remat))


def sampling_programs(mc, batch: int, prompt_len: int, params: SamplingParams, dtype, param_dtype, *,
                      remat: bool = False, kv_cache: bool = True) -> dict[str, sampling.CoreProgram]:
  """The sampler's own jitted cores, as the search's speakers call them on `batch` prompts of at
  most `prompt_len` tokens with `params` (all prompts distinct: the largest prefill):
  "generate": `sampling.generate`'s (a call without a conversation cache, or its first turn);
  with `kv_cache` also "generate_chat_cache": `chat_cache.ConversationCache.generate`'s for a turn
  whose kept prefixes reach prompt_len - 1 tokens and whose new tokens reach prompt_len (the
  largest cache that call allocates: a continued chat beside a new one)."""
  graphdef, state = sampler_state(mc, dtype, param_dtype, remat)
  out = {"generate": sampling.core_program(graphdef, state, batch, prompt_len, params)}
  if kv_cache:
    out["generate_chat_cache"] = chat_cache.core_program(graphdef, state, batch, max(prompt_len - 1, 0),
                                                         prompt_len, params)
  return out


def sampling_bytes(mc, prog: sampling.CoreProgram, act_bytes: int, cache_bytes: int) -> dict:
  """Bytes of one sampler program on its device (unsharded): the KV caches alive at once (exact,
  from the program's shapes: the prefill rows' cache, the batch's when the prefill is shared, the
  kept prefixes' input) and the prefill's transient (analytic: one layer's activations over the
  prefill rows x new prompt tokens)."""
  sh = prog.shapes
  slots = lambda rows, n: 2 * mc.num_hidden_layers * rows * mc.num_key_value_heads * mc.head_dim * n * cache_bytes
  kv = slots(sh["prefill_rows"], sh["cache_slots"]) + slots(sh["prefill_rows"], sh["kept"])
  if sh["prefill_rows"] < sh["batch"]:
    kv += slots(sh["batch"], sh["cache_slots"])
  transient = activation_bytes(mc, sh["prefill_rows"], sh["prompt"], act_bytes, False)["per_layer_full"]
  return {"kv_cache": int(kv), "prefill_transient": int(transient)}


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


def alternatives(mc, train_batch, seq_len, act_bytes, hbm, usable, devices0, tensor, calibration=1.0) -> list[dict]:
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


# ----------------------------------------------------------------------------- measurements
def measure_activations(mc, dtype, local_batch: int, seq_len: int, remat: bool, layers=(1, 2)) -> dict:
  """temp bytes of one device's fwd+bwd of the trainer's loss (`train.loop.lm_loss_fn`; unsharded,
  local batch [B, T]) compiled for `layers` depths, extrapolated linearly to mc.num_hidden_layers.
  Parameters use the compute dtype (no casts)."""
  temps = []
  for n_layers in layers:
    m = dataclasses.replace(mc, num_hidden_layers=n_layers)
    graphdef, params, rest = nnx.split(abstract_model(m, dtype, dtype, remat=remat), nnx.Param, ...)
    fn = jax.jit(jax.value_and_grad(loop.lm_loss_fn(graphdef, rest), has_aux=True))
    x = jax.ShapeDtypeStruct((local_batch, seq_len), jnp.int32)
    c = fn.lower(params, {"input_ids": x, "loss_mask": x, "attention_mask": x}).compile()
    temps.append(c.memory_analysis().temp_size_in_bytes)
  slope = (temps[1] - temps[0]) / (layers[1] - layers[0])
  total = temps[0] + slope * (mc.num_hidden_layers - layers[0])
  return {"temp_bytes_by_layers": dict(zip(layers, temps)), "per_layer": int(slope), "total": int(total)}


def mem_stats(compiled) -> dict:
  """memory_analysis() of a compiled program: argument / output / alias / temp bytes."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                          "alias_size_in_bytes", "temp_size_in_bytes")}


# ----------------------------------------------------------------------------- make_plan
def make_plan(cfg, mesh_shape: tuple[int, int, int], *, which: str = "agent", train_batch: int = 0,
              seq_len: int = 0, sample_batch: int = 0, sample_len: int = 0, compile_mode: str = "auto",
              hbm_gib: float = 16.0, usable_fraction: float = 0.9) -> Plan:
  """The plan of `cfg`'s `which` model on a (data, fsdp, tensor) mesh of jax's first devices.
  0 for a size means the config's: train_batch = sft.batch_size, seq_len = data.max_len,
  sample_batch = trees in flight (search.trees_in_flight, 0 = trees_per_shard) × search.k
  (rounded up to the data×fsdp extent),
  sample_len = search.max_prompt_len + search.agent_sampling.max_new_tokens. compile_mode: "none"
  (lower only), "auto" (+ reduced-depth compiles and the activation cross-check), "full" (+ the
  full-depth train step)."""
  t_start = time.time()
  data, fsdp, tensor = mesh_shape
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
    in_flight = int(cfg.search.trees_in_flight or cfg.search.trees_per_shard)
    sample_batch = shd.round_to_batch(in_flight * int(cfg.search.k), mesh)
  sample_len = sample_len or int(cfg.search.max_prompt_len) + int(cfg.search.agent_sampling.max_new_tokens)
  prompt_len = min(int(cfg.search.max_prompt_len), sample_len)
  shd.check_batch(mesh, train_batch, "train batch")
  shd.check_batch(mesh, sample_batch, "sampling batch")
  local_b = train_batch // div
  lcfg = lora_config(cfg, which)
  prog = functools.partial(train_program, cfg, mesh=mesh, which=which, train_batch=train_batch, seq_len=seq_len,
                           dtype=dtype, param_dtype=param_dtype)   # prog(mc, remat=...)

  # -- train step (exact terms from shapes and shardings)
  lowered, timings, compiled = {}, {}, {}
  t = time.time()
  if lcfg.enabled:  # the configured step: only the adapter is trained / in the optimizer state
    train = prog(mc, remat=bool(cfg.model.remat))
    lowered["train_lora"] = train.lower()
    adapter, abs_opt, batch, frozen = train.args
    a_sh, o_sh, f_sh = train.shardings
    adapter_b, frozen_b = leaves_bytes_per_device(adapter, a_sh), leaves_bytes_per_device(frozen, f_sh)
    params_b, opt_b, grads_b = frozen_b + adapter_b, leaves_bytes_per_device(abs_opt, o_sh), adapter_b
    transient_b = fsdp_transient_bytes(mc, fsdp, tensor, param_dtype.itemsize) // 2  # no base-weight gradient
    lora_info = {"rank": lcfg.rank, "alpha": lcfg.alpha, "targets": list(lcfg.targets),
                 "adapter_params": count_params(adapter), "adapter_bytes": adapter_b, "frozen_bytes": frozen_b,
                 "remat": bool(cfg.model.remat), "grad_accum": int(batch["input_ids"].shape[0]),
                 "step": "train.loop.make_train_step(train.loop.lm_loss_fn) (the real train step)"}
    n_params = count_params(frozen)   # the base model's
  else:
    train = prog(mc, remat=False)
    lowered["train_remat"] = prog(mc, remat=True).lower()
    lowered["train"] = train.lower()
    params, abs_opt = train.args[:2]
    p_sh, o_sh, _ = train.shardings
    params_b, opt_b = leaves_bytes_per_device(params, p_sh), leaves_bytes_per_device(abs_opt, o_sh)
    grads_b = params_b
    transient_b = fsdp_transient_bytes(mc, fsdp, tensor, param_dtype.itemsize)
    lora_info = None
    n_params = count_params(params)
  timings["lower_train"] = round(time.time() - t, 2)
  act = {r: activation_bytes(mc, local_b, seq_len, act_bytes, r) for r in (False, True)}
  if lcfg.enabled:  # + each adapter's x·A [tokens, r] per target and layer
    extra = local_b * seq_len * lcfg.rank * len(lcfg.targets) * act_bytes
    for r in (False, True):
      act[r] = dict(act[r], total=act[r]["total"] + extra * (1 if r else mc.num_hidden_layers))
  measured, calibration = {}, 1.0
  if compile_mode in ("auto", "full"):
    t = time.time()
    measured = measure_activations(mc, jnp.dtype(jnp.float32), local_b, seq_len, remat=False)
    analytic32 = activation_bytes(mc, local_b, seq_len, 4, remat=False)["total"]
    measured["analytic_fp32"] = analytic32
    measured["ratio_measured_to_analytic"] = round(measured["total"] / max(analytic32, 1), 4)
    calibration = max(1.0, measured["total"] / max(analytic32, 1))
    timings["measure_activations"] = round(time.time() - t, 2)
    t = time.time()
    small = dataclasses.replace(mc, num_hidden_layers=min(2, mc.num_hidden_layers))
    if lcfg.enabled:
      key, small_prog = "train_lora_sharded_%dlayers", prog(small, remat=bool(cfg.model.remat))
    else:
      key, small_prog = "train_remat_sharded_%dlayers", prog(small, remat=True)
    compiled[key % small.num_hidden_layers] = mem_stats(small_prog.lower().compile())
    timings["compile_train_sharded_small"] = round(time.time() - t, 2)
  if compile_mode == "full":
    t = time.time()
    full_key = "train_lora" if lcfg.enabled else "train_remat"
    compiled[full_key + "_sharded_full"] = mem_stats(lowered[full_key].compile())
    timings["compile_train_sharded_full"] = round(time.time() - t, 2)

  acts = {("remat" if r else "no_remat"): int(act[r]["total"] * calibration) for r in (False, True)}
  fixed = params_b + opt_b + grads_b + transient_b
  totals = {k: fixed + v for k, v in acts.items()}
  train_fits = {k: v <= usable_fraction * hbm for k, v in totals.items()}

  # -- sampling: the sampler's own jitted cores as the search's speakers run them
  t = time.time()
  sp = SamplingParams(**{**cfg.search.agent_sampling.to_dict(), "max_new_tokens": max(1, sample_len - prompt_len)})
  kv_cache = bool(cfg.rollout.kv_cache)
  remat_s = bool(cfg.model.remat)
  progs = sampling_programs(mc, sample_batch, prompt_len, sp, dtype, param_dtype, remat=remat_s, kv_cache=kv_cache)
  for name, prog_s in progs.items():
    lowered[name] = prog_s.lower()
  timings["lower_sampling"] = round(time.time() - t, 2)
  if compile_mode in ("auto", "full"):
    t = time.time()
    small = dataclasses.replace(mc, num_hidden_layers=1)
    for name, prog_s in sampling_programs(small, sample_batch, prompt_len, sp, dtype, param_dtype, remat=remat_s,
                                          kv_cache=kv_cache).items():
      compiled[f"{name}_1layer"] = mem_stats(prog_s.lower().compile())
    timings["compile_sampling_small"] = round(time.time() - t, 2)
  sample_params_b = leaves_bytes_per_device(progs["generate"].args[0])
  by_program = {name: sampling_bytes(mc, prog_s, act_bytes, dtype.itemsize) for name, prog_s in progs.items()}
  sampler = max(by_program, key=lambda k: sum(by_program[k].values()))
  kv_b, prefill_transient = by_program[sampler]["kv_cache"], by_program[sampler]["prefill_transient"]
  sampling_total = sample_params_b + kv_b + prefill_transient
  sampling_fits = sampling_total <= usable_fraction * hbm
  sampling_info = {"program": sampler, "placement": "one device (speakers' models are not sharded)",
                   "params_dtype": param_dtype.name, "mode": progs["generate"].mode,
                   "shapes": {k: p.shapes for k, p in progs.items()}, "bytes_by_program": by_program}

  alts = [] if lcfg.enabled else alternatives(mc, train_batch, seq_len, act_bytes, hbm, usable_fraction,
                                              n_dev, tensor, calibration)
  verdict_train = ("fits without remat" if train_fits["no_remat"] else "fits with remat" if train_fits["remat"]
                   else "does NOT fit")
  timings["plan"] = round(time.time() - t_start, 1)
  settings = {"which": which, "mesh": {"data": data, "fsdp": fsdp, "tensor": tensor, "devices": n_dev},
              "dtypes": {"compute": dtype.name, "params": param_dtype.name}, "hbm_gib": hbm_gib,
              "usable_fraction": usable_fraction, "train_batch": train_batch, "seq_len": seq_len,
              "local_batch": local_b, "sample_batch": sample_batch, "sample_len": sample_len,
              "prompt_len": prompt_len, "compile_mode": compile_mode}
  details = {"model": {"source": source, "model_type": mc.model_type, "num_params": n_params,
                       "num_params_config": mc.num_params, "config": dataclasses.asdict(mc)},
             "activations_analytic": {("remat" if r else "no_remat"): act[r] for r in act},
             "measured": measured, "calibration": calibration, "compiled": compiled, "timings": timings,
             "lowered": list(lowered), "lowered_programs": lowered, "verdict_train": verdict_train,
             "suggestion": next((a for a in alts if a["fits"]), None), "alternatives": alts, "lora": lora_info,
             "opt_dtypes": sorted({x.dtype.name for x in jax.tree.leaves(abs_opt) if x.ndim}),
             "sampling": sampling_info}
  return Plan(settings=settings, params=params_b, optimizer_state=opt_b, gradients=grads_b,
              fsdp_transient=transient_b, activations=acts, train_total=totals, train_fits=train_fits,
              sampling_params=sample_params_b, kv_cache=kv_b, prefill_transient=prefill_transient,
              sampling_total=sampling_total, sampling_fits=sampling_fits, hbm_bytes=int(hbm),
              fits=bool((train_fits["no_remat"] or train_fits["remat"]) and sampling_fits), details=details)


# ----------------------------------------------------------------------------- printing
def format_plan(plan: Plan) -> str:
  """The plan as text: per-device memory of training and sampling, the source of each figure, the
  verdict and the analytic alternatives that fit."""
  s, d = plan.settings, plan.details
  m, mesh, lora_info = d["model"], s["mesh"], d["lora"]
  mc = m["config"]
  hbm_gib, usable = s["hbm_gib"], s["usable_fraction"]
  dtype, param_dtype = s["dtypes"]["compute"], s["dtypes"]["params"]
  n_dev = mesh["devices"]
  out = []
  log = out.append

  def g(x):
    return f"{x / GiB:9.3f} GiB" if x >= 2 ** 24 else f"{x / 2 ** 20:9.3f} MiB"

  log(f"model: {m['model_type']} from {m['source']}")
  log(f"  parameters: {m['num_params']:,} ({m['num_params'] / 1e9:.3f}e9); "
      f"ModelConfig.num_params={m['num_params_config']:,}")
  log(f"mesh (data, fsdp, tensor) = ({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}) on {n_dev} host CPU devices; "
      f"HBM {hbm_gib:g} GiB/device, {usable:.0%} usable")
  log(f"dtypes: compute {dtype}, params {param_dtype}; train batch {s['train_batch']} × {s['seq_len']} "
      f"(local {s['local_batch']}); sampling batch {s['sample_batch']}, cache length {s['sample_len']}")
  log("\nper-device memory, training (SFT step, AdamW" + (", LoRA" if lora_info else "") + "):")
  if lora_info:
    log(f"  LoRA rank {lora_info['rank']}, alpha {lora_info['alpha']:g} on {', '.join(lora_info['targets'])}: "
        f"{lora_info['adapter_params']:,} adapter parameters (fp32) trained, base frozen in {param_dtype}; "
        f"real train step, grad_accum {lora_info['grad_accum']}, remat {lora_info['remat']}")
    log(f"  {'frozen base params (' + param_dtype + ', exact)':<40s}{g(lora_info['frozen_bytes'])}")
    log(f"  {'adapter params (float32, exact)':<40s}{g(lora_info['adapter_bytes'])}")
  log(f"  {'params (' + param_dtype + ', exact)':<40s}{g(plan.params)}")
  log(f"  {'optimizer mu+nu (' + ', '.join(d['opt_dtypes']) + ', exact)':<40s}{g(plan.optimizer_state)}")
  grad_dtype = "float32 adapter" if lora_info else param_dtype
  log(f"  {'gradients (' + grad_dtype + ', exact)':<40s}{g(plan.gradients)}")
  log(f"  {'FSDP gather transients (analytic)':<40s}{g(plan.fsdp_transient)}")
  for k in ("no_remat", "remat"):
    name = "activations " + ("with remat" if k == "remat" else "without remat") + " (analytic)"
    log(f"  {name:<40s}{g(plan.activations[k])}  (logits {d['activations_analytic'][k]['logits'] / GiB:.2f} GiB)")
  measured = d["measured"]
  if measured:
    log(f"  cross-check: fp32 fwd+bwd of one device compiled for 1, 2 layers, memory_analysis() temp "
        f"extrapolated to {mc['num_hidden_layers']}: {g(measured['total'])} vs analytic fp32 "
        f"{g(measured['analytic_fp32'])} (ratio {measured['ratio_measured_to_analytic']:.3f}; "
        f"analytic scaled by {d['calibration']:.3f})")
    log("  (measured in fp32 because the CPU backend upcasts bf16 dots and keeps the weight copies; "
        "remat is not measurable on CPU, whose scheduler recomputes early)")
  for k in ("no_remat", "remat"):
    log(f"  {'TOTAL ' + k:<40s}{g(plan.train_total[k])}  -> {'fits' if plan.train_fits[k] else 'does NOT fit'} "
        f"in {usable:.0%} of {hbm_gib:g} GiB")
  smp = d["sampling"]
  shp = smp["shapes"][smp["program"]]
  log(f"\nmemory of the sampler's device ({smp['program']}: the sampler's own jitted core, {smp['placement']}; "
      f"batch {shp['batch']}, prefill rows {shp['prefill_rows']}, kept {shp['kept']} + prompt {shp['prompt']} + "
      f"new {shp['new']} = {shp['cache_slots']} cache slots):")
  log(f"  {'params (' + smp['params_dtype'] + ', exact)':<40s}{g(plan.sampling_params)}")
  log(f"  {'KV caches alive at once (exact)':<40s}{g(plan.kv_cache)}")
  log(f"  {'prefill transient (analytic)':<40s}{g(plan.prefill_transient)}")
  log(f"  {'TOTAL':<40s}{g(plan.sampling_total)}  -> {'fits' if plan.sampling_fits else 'does NOT fit'}")
  if not plan.sampling_fits and n_dev > 1:
    log("  (the search's speakers hold their models on one device: build.load_model does not shard them)")
  if d["compiled"]:
    log("\ncompiled on the CPU backend (memory_analysis per device; CPU keeps all gathered weights alive, "
        "so temp is an upper bound, for information):")
    for k, v in d["compiled"].items():
      log(f"  {k}: " + ", ".join(f"{n.replace('_size_in_bytes', '')} {b / GiB:.3f} GiB" for n, b in v.items()))
  log(f"\nverdict: training {d['verdict_train']}; sampling {'fits' if plan.sampling_fits else 'does NOT fit'} "
      f"on a {n_dev}-device mesh of {hbm_gib:g} GiB devices.")
  suggestion = d["suggestion"]
  if not (plan.train_fits["no_remat"] or plan.train_fits["remat"]):
    if suggestion:
      log(f"  first analytic alternative that fits: {suggestion['devices']} devices (fsdp={suggestion['fsdp']}), "
          f"{suggestion['param_dtype']} params, remat={suggestion['remat']}, local batch {suggestion['local_batch']} "
          f"({suggestion['total_gib']:.2f} GiB)")
    else:
      log("  no analytic alternative up to 256 devices fits; use tensor parallelism or a smaller batch")
  fitting_here = [a for a in d["alternatives"] if a["devices"] == n_dev and a["fits"]]
  if fitting_here:
    log("  fits on this mesh (analytic): " + "; ".join(
        f"{a['param_dtype']} params{' + remat' if a['remat'] else ''}, local batch {a['local_batch']}: "
        f"{a['total_gib']:.2f} GiB" for a in fitting_here))
  log(f"lowered: {', '.join(d['lowered'])} (full depth); plan took {d['timings']['plan']:.1f} s")
  return "\n".join(out)
