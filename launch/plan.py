r"""Memory plan of a config on its device mesh, built on the host CPU without weights.

  python launch/plan.py --config=configs/esconv_llama3_8b.py [--json_out=plan.json] [--compile=auto]

Forces as many host CPU devices as the config's mesh has (XLA_FLAGS
--xla_force_host_platform_device_count=N, set before jax starts; re-executes itself if jax was
already imported), then prints `engage_jax.memory_plan` (the trainer's own train step and the
sampler's own jitted cores lowered on abstract inputs; per-device params, optimizer state,
gradients, FSDP transients, activations with and without remat, KV cache, against the device HBM;
see that module for where each figure comes from) and optionally writes it as JSON.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the plan as JSON to this path.")
_MODEL = flags.DEFINE_enum("model", "agent", ["agent", "simulator"], "Which model of the config to plan.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 0, "Global train batch (0 = config sft.batch_size).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Train sequence length (0 = config data.max_len).")
_SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch", 0, "Sampling batch (0 = trees in flight (search.trees_in_flight, 0 = "
    "trees_per_shard) * search.k, rounded up to the data×fsdp extent).")
_SAMPLE_LEN = flags.DEFINE_integer(
    "sample_len", 0, "KV cache length (0 = search.max_prompt_len + search.agent_sampling.max_new_tokens).")
_COMPILE = flags.DEFINE_enum(
    "compile", "auto", ["none", "auto", "full"],
    "none: lower only, analytic activations; auto: also compile reduced-depth programs and measure "
    "activations with memory_analysis(); full: also compile the full-depth sharded train step (slow).")
_HBM_GIB = flags.DEFINE_float("hbm_gib", 16.0, "Device memory in GiB (TPU v5e: 16, v5p: 95, H100: 80).")
_USABLE = flags.DEFINE_float("usable_fraction", 0.9, "Fraction of HBM usable by the program.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Devices for a mesh axis of -1 (0 = treat -1 as 1).")

_EXEC_GUARD = "_ENGAGE_PLAN_REEXEC"


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


def _check(cfg, devices: int) -> None:
  """The config's values (not its paths or data files: a plan needs neither), before any work."""
  from engage_jax import config_check  # noqa: PLC0415 (engage_jax is importable after __main__'s sys.path insert)
  from engage_jax.errors import InputErrors  # noqa: PLC0415 (engage_jax is importable after __main__'s sys.path insert)
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
  shape = mesh_sizes(cfg, _DEVICES.value)
  _check(cfg, math.prod(shape))
  ensure_host_devices(math.prod(shape))
  from engage_jax import memory_plan  # noqa: PLC0415 (after ensure_host_devices: XLA_FLAGS before JAX starts)
  plan = memory_plan.make_plan(cfg, shape, which=_MODEL.value, train_batch=_TRAIN_BATCH.value,
                               seq_len=_SEQ_LEN.value, sample_batch=_SAMPLE_BATCH.value,
                               sample_len=_SAMPLE_LEN.value, compile_mode=_COMPILE.value,
                               hbm_gib=_HBM_GIB.value, usable_fraction=_USABLE.value)
  print(memory_plan.format_plan(plan), flush=True)
  if _JSON_OUT.value:
    path = _JSON_OUT.value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(plan.to_json(), f, indent=2, default=str)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from engage_jax import cli
  cli.run_app(main)
