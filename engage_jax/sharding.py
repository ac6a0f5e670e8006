"""Device mesh and sharding rules: the one place that says how arrays are laid out over devices.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded over it),
`tensor` (heads / MLP / vocab split). This module owns:

* parameters: every variable of a model's NNX state (the `nnx.Param`s and LoRA's `nnx.LoRAParam`s:
  a `CausalLM` holds no other variables; rope frequencies are recomputed, LoRA's scale and
  on/off flag are static attributes) gets *logical* axis names from `PARAM_RULES` (regex on its
  state path; a path no rule matches is an error), with the stacked decoder layers' leading axis
  named `LAYERS` (`layers/...` paths, [L, ...]: never sharded); `LOGICAL_TO_MESH` maps them to
  mesh axes;
* activations: `constrain(x, axes)` pins an activation inside the model to `ACTIVATION_TO_MESH`
  on the mesh set with `jax.set_mesh` (no mesh set: x unchanged, the traced program has no
  sharding constraint);
* batches: `batch_sharding` / `round_to_batch` / `place_batch`, the batch dim over data×fsdp;
* the KV cache's layout (`cache_sharding`);
* processes: `put` / `to_host`, the multi-controller host ↔ global array boundary.

A dimension that its mesh axes do not divide is replicated instead.

    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    model = shard_model(model, mesh)                    # params placed with NamedSharding
    step = jax.jit(fn, in_shardings=(state_sharding(mesh, state), batch_sharding(mesh, 2)), ...)
    batch = place_batch({"input_ids": ids}, mesh)       # host [B, T] → global, B over data×fsdp
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.experimental import multihost_utils

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name → mesh axis (or axes). None = replicated.
LOGICAL_TO_MESH: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "norm": None,
    "length": None,
    "head_dim": None,
    "layers": None,   # the scanned layer axis of stacked parameters and of the KV cache
}
LAYERS = "layers"

# Activations (the model's `constrain` calls): logical name → mesh axes. Only the batch is split:
# the hidden dim stays whole (parameters' "embed" is over fsdp, which already splits the batch).
ACTIVATION_TO_MESH: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "embed": None,
}
HIDDEN_AXES = ("batch", "length", "embed")  # the residual stream [B, T, D]

# KV cache (models/llama.py KVCache) field → logical axes: keys [L, B, KV, hd, S], values [L, B, KV, S, hd].
CACHE_AXES: dict[str, tuple[str, ...]] = {
    "keys": (LAYERS, "batch", "kv_heads", "head_dim", "length"),
    "values": (LAYERS, "batch", "kv_heads", "length", "head_dim"),
}

# NNX parameter path (joined with "/") → logical axes of one layer's array, first match wins; a
# path under `layers/` (stacked over the decoder layers) gets LAYERS in front.
PARAM_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed_tokens$", ("vocab", "embed")),
    (r"q_proj/kernel$", ("embed", "heads")),
    (r"(k|v)_proj/kernel$", ("embed", "kv_heads")),
    (r"q_proj/bias$", ("heads",)),
    (r"(k|v)_proj/bias$", ("kv_heads",)),
    (r"o_proj/kernel$", ("heads", "embed")),
    (r"(gate|up)_proj/kernel$", ("embed", "mlp")),
    (r"down_proj/kernel$", ("mlp", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(layernorm|norm)/weight$", ("norm",)),
    # LoRA adapters (models/lora.py): A [in, r] and B [r, out] follow their projection's in/out axes
    (r"(q|k|v|gate|up)_proj/lora/lora_a$", ("embed", None)),
    (r"o_proj/lora/lora_a$", ("heads", None)),
    (r"down_proj/lora/lora_a$", ("mlp", None)),
    (r"q_proj/lora/lora_b$", (None, "heads")),
    (r"(k|v)_proj/lora/lora_b$", (None, "kv_heads")),
    (r"(o|down)_proj/lora/lora_b$", (None, "embed")),
    (r"(gate|up)_proj/lora/lora_b$", (None, "mlp")),
)

def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = list(devices) if devices is not None else jax.devices()
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh sizes {sizes}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh sizes {sizes} do not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def path_str(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def logical_axes(path: tuple, ndim: int) -> tuple[str | None, ...]:
  """Logical axis names for the variable at NNX state `path` (first matching `PARAM_RULES` entry,
  after LAYERS for a stacked `layers/...` path); ValueError naming the path when no rule matches or
  the rule's rank differs."""
  name = path_str(path)
  for pattern, axes in PARAM_RULES:
    if re.search(pattern, name):
      if path and str(path[0]) == "layers":
        axes = (LAYERS,) + axes
      if len(axes) != ndim:
        raise ValueError(f"sharding rule {pattern!r} gives {len(axes)} axes for {name} of rank {ndim}")
      return axes
  raise ValueError(f"no sharding rule (engage_jax.sharding.PARAM_RULES) matches the state path {name!r}")


def logical_to_spec(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    rules=None) -> P:
  """PartitionSpec for logical `axes` under `rules` (default `LOGICAL_TO_MESH`); mesh axes of size
  1 or absent from the mesh are dropped, and dims that the mesh axes do not divide are replicated."""
  rules = LOGICAL_TO_MESH if rules is None else rules
  spec = []
  for i, ax in enumerate(axes):
    mesh_ax = rules.get(ax) if ax is not None else None
    if mesh_ax is not None:
      names = (mesh_ax,) if isinstance(mesh_ax, str) else tuple(mesh_ax)
      names = tuple(n for n in names if mesh.shape.get(n, 1) > 1)
      size = math.prod(mesh.shape[n] for n in names)
      if not names or (shape is not None and shape[i] % size):
        mesh_ax = None
      else:
        mesh_ax = names[0] if len(names) == 1 else names
    spec.append(mesh_ax)
  return P(*spec)


def param_sharding(mesh: Mesh, path: tuple, shape: Sequence[int]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(mesh, logical_axes(path, len(shape)), shape))


def state_sharding(mesh: Mesh, state: nnx.State) -> nnx.State:
  """A State of NamedShardings with the same structure as `state` (for jit in/out shardings)."""
  flat = [(path, var.replace(param_sharding(mesh, path, var.shape))) for path, var in nnx.to_flat_state(state)]
  return nnx.from_flat_state(flat)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
  """Places every parameter of `model` with its NamedSharding on `mesh` (in place; returns model)."""
  state = nnx.state(model)
  flat = [(path, var.replace(put(var[...], param_sharding(mesh, path, var.shape))))
          for path, var in nnx.to_flat_state(state)]
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`x` constrained to the logical activation `axes` (`ACTIVATION_TO_MESH`, e.g. `HIDDEN_AXES`
  for [B, T, D]) on the mesh set with `jax.set_mesh`; without one, `x` itself (no constraint is
  traced). Dims the mesh axes do not divide stay replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(mesh, axes, x.shape, ACTIVATION_TO_MESH))


# ---------------------------------------------------------------------------- batches
def batch_sharding(mesh: Mesh, ndim: int, *, accum: bool = False) -> NamedSharding:
  """An [B, ...] array of rank `ndim` (accum: [A, B, ...], A micro-batches, replicated): B over
  the batch axes (data, fsdp), the rest replicated."""
  lead = (None, "batch") if accum else ("batch",)
  return NamedSharding(mesh, logical_to_spec(mesh, lead + (None,) * (ndim - len(lead))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """Global batch sizes must be multiples of this (the data × fsdp extent)."""
  return math.prod(mesh.shape.get(a, 1) for a in LOGICAL_TO_MESH["batch"])


def round_to_batch(size: int, mesh: Mesh) -> int:
  """The smallest multiple of `batch_divisor(mesh)` that is >= size (a batch padded to it splits
  evenly over the batch axes)."""
  d = batch_divisor(mesh)
  return -(-size // d) * d


def check_batch(mesh: Mesh, batch_size: int, what: str = "batch size") -> None:
  d = batch_divisor(mesh)
  if batch_size % d:
    raise ValueError(f"{what} {batch_size} is not divisible by the data×fsdp mesh extent {d}")


def cache_sharding(mesh: Mesh, cache) -> Any:
  """NamedShardings of a KV cache, in its structure: `cache` is a (possibly abstract, e.g.
  `jax.eval_shape`) `models.llama.KVCache(keys [L, B, KV, hd, S], values [L, B, KV, S, hd])`;
  each field is sharded by its logical axes in CACHE_AXES."""
  def one(path, x):
    return NamedSharding(mesh, logical_to_spec(mesh, CACHE_AXES[path[-1].name], x.shape))
  return jax.tree_util.tree_map_with_path(one, cache)


# ---------------------------------------------------------------------------- processes
# The one place that knows about JAX's multi-controller runtime: every process holds the same
# host data (host-side decisions are identical), builds global arrays from its own part of it,
# and reads sharded results back through one gather.
def _local_box(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> tuple[slice, ...]:
  """The slice of the global array `shape` that this process's devices hold (a box: for each
  dimension, from the lowest start to the highest stop of its addressable shards)."""
  idx = list(sharding.addressable_devices_indices_map(tuple(shape)).values())
  box = []
  for d, n in enumerate(shape):
    parts = [s[d].indices(n)[:2] for s in idx]
    box.append(slice(min(p[0] for p in parts), max(p[1] for p in parts)))
  return tuple(box)


def put(x, sharding: jax.sharding.Sharding) -> jax.Array:
  """Host array `x` (its *global* value, the same on every process) as a jax.Array with
  `sharding`. One process (or a sharding whose devices are all this process's): `jax.device_put`.
  Several: each process passes its own rows to `jax.make_array_from_process_local_data`."""
  if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)  # host → local devices, or global → global (a reshard)
  x = np.asarray(x)
  return jax.make_array_from_process_local_data(sharding, x[_local_box(sharding, x.shape)], x.shape)


def put_tree(tree, shardings):
  """`put` over matching pytrees of host arrays and shardings (e.g. a batch dict)."""
  return jax.tree.map(put, tree, shardings)


def place_batch(tree, mesh: Mesh, *, accum: bool = False):
  """A pytree of host arrays [B, ...] (accum: [A, B, ...]) as global arrays on `mesh`, each
  with `batch_sharding(mesh, ndim, accum=accum)` (`put`: multi-host safe; None leaves stay
  None): the one batch-placement helper."""
  return jax.tree.map(lambda x: put(x, batch_sharding(mesh, np.ndim(x), accum=accum)), tree)


def to_host(tree):
  """numpy copies of `tree`'s arrays (other leaves unchanged). An array that is not fully
  addressable is gathered first (`multihost_utils.process_allgather`): a collective, so every
  process calls this at the same point of the program."""
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)
