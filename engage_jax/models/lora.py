"""LoRA adapters on the NNX decoder (flax's `nnx.LoRA`), merging, and PEFT-format I/O.

    lcfg = LoraConfig(rank=16, alpha=32, targets=("q", "v"))
    apply_lora(model, lcfg, rngs=nnx.Rngs(0))     # in place: adapters on the targeted Linears
    graphdef, adapter, frozen, rest = split_trainable(model)   # adapter: LoRAParam state only
    with disabled(model): ...                      # adapter off: the base model's logits exactly
    merged = merge(model)                          # a plain CausalLM with W + s·A·B
    save_peft(model, dir); load_peft(base, dir)    # adapter_config.json + adapter_model.safetensors

A targeted projection `y = x W` (kernel W [in, out]) becomes `y = x W + s · (x A) B` with
A = `lora.lora_a` [in, r], B = `lora.lora_b` [r, out] (fp32 `nnx.LoRAParam`s) and s = alpha / r
(alpha / sqrt(r) with rslora), as PEFT computes it. init "default": A Kaiming-uniform, B = 0 (the
model is unchanged until trained; PEFT's `init_lora_weights=True`); "random": B random too (a
non-identity start, PEFT's `init_lora_weights=False`; used by tests).

PEFT names: `base_model.model.<transformers module>.lora_A.weight` [r, in] and `.lora_B.weight`
[out, r], the transposes of A and B.

The decoder layers are scanned (models.llama): an adapter on a stacked projection (kernel
[L, in, out]) is stacked too, A [L, in, r] and B [L, r, out]; PEFT export writes one tensor per
layer (`model.layers.<i>.…`) and import stacks them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file
from safetensors import SafetensorError, safe_open

from engage_jax.errors import InputError
from engage_jax.fields import Bool, Check, Int, Num, OneOf, Str, field
from engage_jax.fileio import umask_mode
from engage_jax.models.llama import Linear, stack_modules, CausalLM
from engage_jax.models.hf import hf_name, is_stacked

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INITS = ("default", "random")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def _target_name(t: str) -> str:
  t = t.strip()
  return t if t.endswith("_proj") else f"{t}_proj"


class _NoDropout(Check):
  what = "LoRA dropout is not implemented; must be 0.0"

  def __call__(self, v) -> bool:
    return v == 0


class _Targets(Check):
  """Comma-separated projections (or a list of them), each one of TARGETS, with or without `_proj`."""
  what = f"must be a comma-separated list of projections ({', '.join(t.removesuffix('_proj') for t in TARGETS)})"

  def __call__(self, v) -> bool:
    names = v.split(",") if isinstance(v, str) else list(v)
    names = [_target_name(str(x)) for x in names if str(x).strip()]
    return bool(names) and all(n in TARGETS for n in names)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank 0 = no adapters. targets: projection names ("q" or "q_proj"; TARGETS)."""
  rank: int = field(0, "adapter rank r (0: LoRA off, full fine-tuning)", Int(0, " (0 = LoRA off)"))
  alpha: float = field(16.0, "scale alpha / r (PEFT's lora_alpha)", Num(0.0, lo_open=True))
  dropout: float = field(0.0, "adapter dropout (only 0.0 is implemented)", _NoDropout())
  targets: tuple[str, ...] = field(TARGETS, "projections with adapters (comma-separated: q,k,v,o,gate,up,down)",
                                   _Targets(), encode=lambda t: ",".join(x.removesuffix("_proj") for x in t))
  init: str = field("default", "default: B = 0 (the model unchanged at start); random: B random too",
                    OneOf(INITS))
  rslora: bool = field(False, "rank-stabilised scale alpha / sqrt(r)", Bool())
  path: str = field("", "a PEFT adapter dir to start from (load_peft) instead of a fresh init",
                    Str("must be a string (empty: a fresh adapter)"))

  def __post_init__(self):
    t = self.targets.split(",") if isinstance(self.targets, str) else list(self.targets)
    object.__setattr__(self, "targets", tuple(_target_name(str(x)) for x in t if str(x).strip()))

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  @classmethod
  def from_any(cls, cfg: Any = None) -> LoraConfig:
    """From a LoraConfig, dict or ConfigDict; targets as a comma-separated string or a list."""
    if cfg is None:
      return cls()
    if isinstance(cfg, cls):
      return cfg
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k in names}
    return cls(**d)

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), targets=list(self.targets))


def problems(lcfg: LoraConfig, where: str = "lora") -> list[InputError]:
  """One InputError per bad field of an enabled config (rank 0 is always valid)."""
  out = []
  if not isinstance(lcfg.rank, int) or isinstance(lcfg.rank, bool) or lcfg.rank < 0:
    return [InputError(f"must be an integer >= 0 (0 = LoRA off); got {lcfg.rank!r}", f"{where}.rank")]
  if lcfg.rank == 0:
    return out
  if not isinstance(lcfg.alpha, (int, float)) or not lcfg.alpha > 0:
    out.append(InputError(f"must be a positive number; got {lcfg.alpha!r}", f"{where}.alpha"))
  if lcfg.dropout != 0.0:
    out.append(InputError(f"LoRA dropout is not implemented; use 0.0; got {lcfg.dropout!r}",
                          f"{where}.dropout"))
  if lcfg.init not in INITS:
    out.append(InputError(f"must be one of {', '.join(INITS)}; got {lcfg.init!r}", f"{where}.init"))
  if not lcfg.targets:
    out.append(InputError("no target projections", f"{where}.targets"))
  bad = [t for t in lcfg.targets if t not in TARGETS]
  if bad:
    out.append(InputError(f"{', '.join(bad)} match no projection; targets: "
                          f"{', '.join(t[:-5] for t in TARGETS)}", f"{where}.targets"))
  return out


def check(lcfg: LoraConfig, where: str = "lora") -> None:
  found = problems(lcfg, where)
  if found:
    raise found[0]


# ---------------------------------------------------------------------------- adapters
def _linears(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Module]]:
  for path, module in nnx.iter_modules(model):
    if isinstance(module, Linear):
      yield path, module


def adapted(model: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
  """(path, Linear) of every projection that carries an adapter."""
  return [(p, m) for p, m in _linears(model) if getattr(m, "lora", None) is not None]


def has_lora(model: nnx.Module) -> bool:
  return bool(adapted(model))


def apply_lora(model: nnx.Module, lcfg: LoraConfig, rngs: nnx.Rngs | None = None,
               where: str = "lora") -> nnx.Module:
  """Attaches an `nnx.LoRA` (A [in, r], B [r, out], fp32) to every targeted Linear, in place.
  rank 0: the model is returned untouched. InputError naming the field for a bad config or a
  target that matches no parameter."""
  lcfg = LoraConfig.from_any(lcfg)
  check(lcfg, where)
  if not lcfg.enabled:
    return model
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  b_init = (nnx.initializers.zeros if lcfg.init == "default"
            else nnx.initializers.normal(1.0 / math.sqrt(lcfg.rank)))
  targeted = [(path, lin) for path, lin in _linears(model) if str(path[-1]) in lcfg.targets]

  def new_lora(lin):
    din, dout = lin.kernel.shape[-2:]
    return nnx.LoRA(din, lcfg.rank, dout, dtype=lin.dtype, param_dtype=jnp.float32, b_initializer=b_init,
                    rngs=rngs)

  # layer by layer, in the order of the unstacked model's projections (the same random draws),
  # then stacked for the stacked (decoder-layer) projections
  n = max([lin.kernel.ndim == 3 and lin.kernel.shape[0] for _, lin in targeted] + [1])
  per_layer = {path: [] for path, _ in targeted}
  for i in range(n):
    for path, lin in targeted:
      if lin.kernel.ndim == 3 or i == 0:
        per_layer[path].append(new_lora(lin))
  hit = set()
  for path, lin in targeted:
    loras = per_layer[path]
    lin.lora = nnx.data(stack_modules(loras) if lin.kernel.ndim == 3 else loras[0])
    lin.lora_scale = float(lcfg.scale)
    hit.add(str(path[-1]))
  missing = [t for t in lcfg.targets if t not in hit]
  if missing:
    raise InputError(f"{', '.join(missing)} match no parameter of the model", f"{where}.targets")
  model.lora_config = lcfg
  return model


@contextlib.contextmanager
def disabled(model: nnx.Module):
  """Within the block the adapters are off: the model computes exactly the base model."""
  mods = adapted(model)
  old = [m.lora_enabled for _, m in mods]
  for _, m in mods:
    m.lora_enabled = False
  try:
    yield model
  finally:
    for (_, m), o in zip(mods, old):
      m.lora_enabled = o


def split_trainable(model: nnx.Module):
  """(graphdef, trainable, frozen, rest): with adapters, trainable = the LoRAParams and frozen =
  every other Param (merge with `nnx.merge(graphdef, trainable, frozen, rest)`); without,
  trainable = all Params and frozen = None (`nnx.merge(graphdef, trainable, rest)`)."""
  if has_lora(model):
    return nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, None, rest


def delta(lin: nnx.Module) -> jax.Array:
  """s · A B [in, out] in fp32."""
  a = jnp.asarray(lin.lora.lora_a[...], jnp.float32)
  b = jnp.asarray(lin.lora.lora_b[...], jnp.float32)
  return lin.lora_scale * (a @ b)


def merge(model: nnx.Module) -> nnx.Module:
  """A new CausalLM without adapters whose kernels are W + s·A·B (computed in fp32, stored in
  the base dtype). A model without adapters is returned as is."""
  if not has_lora(model):
    return model
  first = next(iter(nnx.to_flat_state(nnx.state(model, nnx.Param))))[1]
  plain = nnx.eval_shape(lambda: CausalLM(model.config, dtype=model.dtype,
                                          param_dtype=first[...].dtype, rngs=nnx.Rngs(0), remat=model.remat,
                                          scan_layers=model.scan_layers))
  graphdef, abs_state = nnx.split(plain)
  deltas = {tuple(p) + ("kernel",): delta(m) for p, m in adapted(model)}
  src = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  flat = []
  for path, var in nnx.to_flat_state(abs_state):
    x = src[path][...]
    if path in deltas:
      x = (x.astype(jnp.float32) + deltas[path]).astype(x.dtype)
    flat.append((path, var.replace(x)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


# ---------------------------------------------------------------------------- PEFT I/O
def _module_names(path: tuple, lin: nnx.Module) -> list[tuple[int | None, str]]:
  """NNX path of a Linear → [(layer, transformers module name)]: one per layer for a stacked
  projection (0, model.layers.0.self_attn.q_proj), ...; [(None, name)] for an unstacked one."""
  path = tuple(path) + ("kernel",)
  layers = range(lin.kernel.shape[0]) if is_stacked(path) else [None]
  return [(i, hf_name(path, i)[0][:-len(".weight")]) for i in layers]


def peft_config(model: nnx.Module, base_model_name_or_path: str = "") -> dict:
  lcfg = model.lora_config
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lcfg.rank, "lora_alpha": lcfg.alpha,
      "lora_dropout": lcfg.dropout, "target_modules": sorted(lcfg.targets), "bias": "none",
      "fan_in_fan_out": False, "use_rslora": lcfg.rslora, "use_dora": False,
      "init_lora_weights": lcfg.init == "default", "modules_to_save": None,
      "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
      "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
  }


def save_peft(model: nnx.Module, out_dir: str | os.PathLike, base_model_name_or_path: str = "") -> Path:
  """Writes the adapters as a PEFT LoRA dir that `peft.PeftModel.from_pretrained(base, dir)` loads."""
  mods = adapted(model)
  if not mods:
    raise ValueError("save_peft: the model has no LoRA adapters")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors = {}
  for path, m in mods:
    a = np.asarray(jax.device_get(m.lora.lora_a[...]), np.float32)   # [L,] in, r
    b = np.asarray(jax.device_get(m.lora.lora_b[...]), np.float32)   # [L,] r, out
    for i, module in _module_names(path, m):
      name = PEFT_PREFIX + module
      tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray((a if i is None else a[i]).T)
      tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray((b if i is None else b[i]).T)
  tmp = out / (ADAPTER_WEIGHTS + ".tmp")
  save_file(tensors, str(tmp), metadata={"format": "pt"})
  umask_mode(tmp)  # safetensors writes 0600
  os.replace(tmp, out / ADAPTER_WEIGHTS)
  (out / ADAPTER_CONFIG).write_text(json.dumps(peft_config(model, base_model_name_or_path), indent=2) + "\n")
  return out


def _peft_lora_config(adapter_dir: Path) -> tuple[LoraConfig, dict]:
  path = adapter_dir / ADAPTER_CONFIG
  if not path.is_file():
    raise InputError(f"no {ADAPTER_CONFIG} (not a PEFT adapter directory)", str(adapter_dir))
  try:
    pc = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise InputError(f"invalid JSON ({e.msg})", str(path)) from None
  where = lambda k: f"{path}: {k}"
  if pc.get("peft_type", "LORA") != "LORA":
    raise InputError(f"only LORA adapters load; got {pc.get('peft_type')!r}", where("peft_type"))
  for key, ok in (("use_dora", lambda v: not v), ("fan_in_fan_out", lambda v: not v),
                  ("bias", lambda v: v in (None, "none")), ("modules_to_save", lambda v: not v),
                  ("rank_pattern", lambda v: not v), ("alpha_pattern", lambda v: not v),
                  ("layers_to_transform", lambda v: v is None)):
    if not ok(pc.get(key)):
      raise InputError(f"not supported; got {pc.get(key)!r}", where(key))
  r = pc.get("r")
  if not isinstance(r, int) or r <= 0:
    raise InputError(f"must be a positive integer; got {r!r}", where("r"))
  tm = pc.get("target_modules")
  if isinstance(tm, str):
    raise InputError(f"a regex target_modules is not supported; give a list of names; got {tm!r}",
                     where("target_modules"))
  if not tm:
    raise InputError("missing or empty", where("target_modules"))
  bad = [t for t in tm if t not in TARGETS]
  if bad:
    raise InputError(f"{', '.join(map(str, bad))} match no parameter of the base model (targets: "
                     f"{', '.join(TARGETS)})", where("target_modules"))
  lcfg = LoraConfig(rank=r, alpha=float(pc.get("lora_alpha", 8)), targets=tuple(tm),
                    rslora=bool(pc.get("use_rslora", False)), path=str(adapter_dir))
  return lcfg, pc


def load_peft(model: nnx.Module, adapter_dir: str | os.PathLike) -> nnx.Module:
  """Attaches the adapters of a PEFT LoRA dir to `model` (a base model without adapters), in
  place. InputError naming the field / tensor when the adapter does not fit the base model."""
  d = Path(adapter_dir)
  lcfg, _ = _peft_lora_config(d)
  if has_lora(model):
    raise ValueError("load_peft: the model already has adapters (load onto a base model)")
  wpath = d / ADAPTER_WEIGHTS
  if not wpath.is_file():
    raise InputError(f"no {ADAPTER_WEIGHTS} (pickle adapter_model.bin is not loaded)", str(d))
  try:
    with safe_open(str(wpath), framework="numpy") as fh:
      tensors = {k: fh.get_tensor(k) for k in fh.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise InputError(f"cannot read safetensors file ({e})", str(wpath)) from None
  # PEFT may store ".lora_A.default.weight" in some versions; normalise that away
  tensors = {re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", k)
             if not k.endswith((".lora_A.weight", ".lora_B.weight")) else k: v for k, v in tensors.items()}
  apply_lora(model, dataclasses.replace(lcfg, init="default"), where=f"{d}/{ADAPTER_CONFIG}")
  used = set()
  for path, m in adapted(model):
    din, dout = m.kernel.shape[-2:]
    for ab, var, expect in (("A", m.lora.lora_a, (lcfg.rank, din)), ("B", m.lora.lora_b, (dout, lcfg.rank))):
      per_layer = []
      for _, module in _module_names(path, m):
        key = f"{PEFT_PREFIX}{module}.lora_{ab}.weight"
        if key not in tensors:
          raise InputError(f"missing tensor {key!r} (adapter for another base model?)", str(wpath))
        arr = tensors[key]
        if tuple(arr.shape) != expect:
          raise InputError(f"tensor {key!r} has shape {tuple(arr.shape)}, the base model needs {expect} "
                           f"(adapter for another base model?)", str(wpath))
        per_layer.append(arr.T)
        used.add(key)
      stacked = m.kernel.ndim == 3
      var[...] = jnp.asarray(np.stack(per_layer) if stacked else per_layer[0], jnp.float32)
  extra = sorted(set(tensors) - used)
  if extra:
    raise InputError(f"tensors not matching the base model: {extra[:3]} (adapter for another base "
                     f"model, e.g. more layers?)", str(wpath))
  return model
