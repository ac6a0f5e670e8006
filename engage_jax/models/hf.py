"""HF checkpoint directories ↔ NNX models: `config.json` + `*.safetensors` (single or sharded), no torch;
`from_pretrained` also reads `.gguf` files (engage_jax.models.gguf).

Parameter names map one to one onto transformers' (`model.layers.3.self_attn.q_proj.weight`); our
`kernel`s are `[in, out]`, torch's `weight`s are `[out, in]`, so they are transposed on the way.
The decoder layers' variables are stacked over the layer axis (`layers/self_attn/q_proj/kernel`
[L, in, out], models.llama): loading stacks the L per-layer tensors, saving unstacks them.
Every load is checked: a missing, unexpected-for-shape or mis-shaped tensor is an error naming it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.flax import save_file

from engage_jax.fileio import umask_mode
from engage_jax.models.config import ModelConfig
from engage_jax.models.llama import CausalLM
from engage_jax.models import gguf
from engage_jax import sharding, multihost

SAFE_INDEX = "model.safetensors.index.json"


def is_stacked(path: tuple) -> bool:
  """Whether the NNX state path is a decoder-layer variable, stacked over the layer axis [L, ...]."""
  return bool(path) and str(path[0]) == "layers"


def hf_name(path: tuple, layer: int | None = None) -> tuple[str, bool]:
  """NNX state path (and, for a stacked layer variable, the layer index) → (transformers tensor
  name, whether to transpose)."""
  parts = [str(p) for p in path]
  if is_stacked(path):
    if layer is None:
      raise ValueError(f"hf_name: {'/'.join(parts)} is stacked over layers; give the layer index")
    parts.insert(1, str(layer))
  transpose = parts[-1] == "kernel"
  if transpose:
    parts[-1] = "weight"
  if parts == ["embed_tokens"]:
    parts = ["embed_tokens", "weight"]
  name = ".".join(parts)
  return (name if parts[0] == "lm_head" else "model." + name), transpose


def read_config(model_dir: str | os.PathLike) -> ModelConfig:
  path = Path(model_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no config.json in model directory")
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None
  return ModelConfig.from_hf_dict(hf, source=str(path))


def _safetensor_files(model_dir: Path) -> list[Path]:
  index = model_dir / SAFE_INDEX
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{index}: malformed safetensors index ({e})") from None
    files = sorted({model_dir / f for f in weight_map.values()})
  else:
    files = sorted(model_dir.glob("*.safetensors"))
  if not files:
    bins = list(model_dir.glob("*.bin")) + list(model_dir.glob("*.pt"))
    hint = " (pickle .bin/.pt checkpoints are not loaded; convert them to safetensors)" if bins else ""
    raise FileNotFoundError(f"{model_dir}: no *.safetensors files{hint}")
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise FileNotFoundError(f"{index}: shard files listed but missing: {missing}")
  return files


def _read_tensors(files: list[Path]) -> dict[str, jax.Array]:
  tensors = {}
  for f in files:
    try:
      with safe_open(str(f), framework="flax") as fh:
        for key in fh.keys():
          tensors[key] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
      raise ValueError(f"{f}: cannot read safetensors file ({e})") from None
  return tensors


def from_pretrained(model_dir: str | os.PathLike, dtype=jnp.float32, param_dtype=None, *,
                    remat: bool = False, scan_layers: bool = True) -> CausalLM:
  """Loads an HF Llama/Mistral/Qwen2 directory, or a `.gguf` file (engage_jax.models.gguf), into a
  `CausalLM` (params in `param_dtype`, default = `dtype`; `remat`, `scan_layers` as in `CausalLM`). Raises naming
  the tensor on any missing or mis-shaped weight."""
  if gguf.is_gguf(model_dir):
    f = gguf.open_gguf(model_dir)
    config = f.model_config()
    return build_model(config, f.hf_tensors(config), str(model_dir), dtype, param_dtype, remat=remat,
                       scan_layers=scan_layers)
  model_dir = Path(model_dir)
  config = read_config(model_dir)
  return build_model(config, _read_tensors(_safetensor_files(model_dir)), str(model_dir), dtype, param_dtype,
                     remat=remat, scan_layers=scan_layers)


def build_model(config: ModelConfig, tensors: dict, source: str, dtype=jnp.float32, param_dtype=None, *,
                remat: bool = False, scan_layers: bool = True) -> CausalLM:
  """A `CausalLM` of `config` with weights from `tensors` (transformers names, torch layout)."""
  param_dtype = param_dtype or dtype
  abstract = nnx.eval_shape(lambda: CausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0),
                                             remat=remat, scan_layers=scan_layers))
  graphdef, abs_state = nnx.split(abstract)
  used = set()
  flat = []
  for path, var in nnx.to_flat_state(abs_state):
    if is_stacked(path):  # L per-layer tensors → [L, ...]
      arr = np.stack([_checked(tensors, path, i, var.shape[1:], source) for i in range(var.shape[0])])
      used.update(hf_name(path, i)[0] for i in range(var.shape[0]))
    else:
      arr = _checked(tensors, path, None, var.shape, source)
      used.add(hf_name(path)[0])
    flat.append((path, var.replace(jnp.asarray(arr, dtype=var.dtype))))
  unexpected = [k for k in tensors if k not in used and not (k == "lm_head.weight" and config.tie_word_embeddings)
                and "rotary_emb" not in k]
  if unexpected:
    raise ValueError(f"{source}: unexpected tensors not used by {config.model_type}: {unexpected[:5]}")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _checked(tensors: dict, path: tuple, layer: int | None, shape: tuple, source: str):
  """The tensor of `path` (layer `layer`) in our layout, its shape checked against `shape`."""
  name, transpose = hf_name(path, layer)
  if name not in tensors:
    raise ValueError(f"{source}: missing tensor {name!r} (needed for {'/'.join(map(str, path))})")
  arr = np.asarray(tensors[name])
  arr = arr.T if transpose else arr
  if tuple(arr.shape) != tuple(shape):
    raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected "
                     f"{tuple(shape)[::-1] if transpose else tuple(shape)}")
  return arr


def hf_state(model: CausalLM) -> dict[str, np.ndarray]:
  """The model's parameters as host arrays under transformers' names and layout (per layer,
  `[out, in]` weights). A collective on several processes (every process calls it)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    arr = sharding.to_host(var[...])  # every process joins the gather
    for layer, one in (enumerate(arr) if is_stacked(path) else [(None, arr)]):  # unstack layers
      name, transpose = hf_name(path, layer)
      out[name] = np.ascontiguousarray(one.T if transpose else one)
  return out


def save_pretrained(model: CausalLM, out_dir: str | os.PathLike, dtype=None) -> Path:
  """Writes `config.json` + `model.safetensors` that `transformers.AutoModelForCausalLM` loads."""
  out_dir = Path(out_dir)
  tensors = {name: jnp.asarray(arr, dtype=dtype or arr.dtype) for name, arr in hf_state(model).items()}
  multihost.main_write(_write_hf, model, out_dir, tensors, dtype, what=str(out_dir))  # process 0 writes
  return out_dir


def _write_hf(model: CausalLM, out_dir: Path, tensors: dict, dtype) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  tmp = out_dir / "model.safetensors.tmp"
  save_file(tensors, str(tmp), metadata={"format": "pt"})
  umask_mode(tmp)  # safetensors writes 0600
  os.replace(tmp, out_dir / "model.safetensors")
  hf = model.config.to_hf_dict()
  hf["torch_dtype"] = str(jnp.dtype(dtype or next(iter(tensors.values())).dtype))
  (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
