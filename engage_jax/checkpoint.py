"""Orbax checkpoints of a training run (the one module that knows which Orbax API is used).

Layout: `<dir>/<step>/{params,opt_state,meta}` written by Orbax's V0 `CheckpointManager` with
`args.Composite(StandardSave, StandardSave, JsonSave)`; Orbax writes each step into a temporary
directory and renames it when complete (atomic), keeps the last `keep` steps and removes
half-written temporaries on start.

- params: flat dict {"layers.self_attn.q_proj.kernel": array [L, D, H*hd]} of the NNX Param state
  (decoder layers stacked, models.llama); a checkpoint of the older per-layer layout
  ("layers.0.self_attn...") is refused with one line (`CheckpointMismatch`, `check_shapes`);
- opt_state: the optimizer state's leaves in tree order {"00000": array, ...} (restored into the
  tree structure of a freshly initialised optimizer state);
- meta (JSON): step, param_shapes {path: shape}, model_config, data iterator position, RNG and
  whatever the loop adds.

    mgr = CheckpointManager(dir, keep=3)
    mgr.save(step, params, opt_state, meta)
    restored = mgr.restore(params_like, opt_state_like)   # latest; .params .opt_state .step .meta
    export_hf(dir, out_dir)                                # → config.json + safetensors

A checkpoint whose parameter names or shapes differ from the target is refused with a
`CheckpointMismatch` (a ValueError) naming the first mismatching parameter: that is a config
problem, the same for every step. A step that cannot be read (truncated, garbled, missing files)
or holds non-finite parameters is *corrupt*: `restore_intact` (used by the training loop, and by
`restore_latest` / `restore_model` / `export_hf` without an explicit step) falls back to the newest
intact step with a warning naming what it skipped, and in a writable manager moves the corrupt
step aside to `<dir>.corrupt/<step>` so that the step can be written again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging
import os
import re
import sys
import time
import types
from typing import Any
from collections.abc import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
import jax.numpy as jnp

from engage_jax.errors import InputError
from engage_jax import errors, models, sharding, multihost
from engage_jax.models import CausalLM, ModelConfig

log = logging.getLogger(__name__)


class CheckpointMismatch(InputError):
  """The checkpoint's parameters or optimizer state do not fit the target (config problem)."""


class CorruptCheckpoint(InputError):
  """A checkpoint step cannot be read or holds non-finite parameters."""


def param_path(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def flatten_params(params: nnx.State) -> dict[str, jax.Array]:
  """NNX Param state → {"a.0.b": array}."""
  return {param_path(p): v[...] for p, v in nnx.to_flat_state(params)}


def unflatten_params(template: nnx.State, flat: Mapping[str, Any]) -> nnx.State:
  """Arrays of `flat` put into the structure (and Variable types) of `template`."""
  pairs = [(p, v.replace(flat[param_path(p)])) for p, v in nnx.to_flat_state(template)]
  return nnx.from_flat_state(pairs)


def nonfinite_params(params: nnx.State) -> str | None:
  """The name of the first parameter holding NaN / inf, or None."""
  for p, v in nnx.to_flat_state(params):
    x = v[...]
    if jnp.issubdtype(x.dtype, jnp.floating) and not bool(sharding.to_host(jnp.isfinite(x).all())):
      return param_path(p)
  return None


def param_shapes(params: nnx.State) -> dict[str, list[int]]:
  return {param_path(p): list(v.shape) for p, v in nnx.to_flat_state(params)}


PER_LAYER = re.compile(r"^layers\.\d+\.")  # a parameter name of the unstacked layout (before scan)


def check_shapes(saved: Mapping[str, Any], target: Mapping[str, Any], where: str) -> None:
  """ValueError naming the first parameter whose presence or shape differs (one line for a
  checkpoint of the per-layer layout written before the layers were stacked)."""
  old = sorted(n for n in saved if PER_LAYER.match(n))
  if old and not any(PER_LAYER.match(n) for n in target):
    raise CheckpointMismatch(f"parameters are stored per layer ({old[0]!r}, ...): written by an engage_jax "
                             f"before the decoder layers were stacked and scanned; this version cannot "
                             f"resume or load it: retrain, or export it to HF with the older version and "
                             f"load that directory", f"checkpoint {where}")
  for name in sorted(set(saved) | set(target)):
    if name not in target:
      raise CheckpointMismatch(f"parameter {name!r} {list(saved[name])} does not exist in the "
                               f"model (different architecture?)", f"checkpoint {where}")
    if name not in saved:
      raise CheckpointMismatch(f"model parameter {name!r} {list(target[name])} is missing from the "
                               f"checkpoint (different architecture?)", f"checkpoint {where}")
    if list(saved[name]) != list(target[name]):
      raise CheckpointMismatch(f"parameter {name!r} has shape {list(saved[name])} in the checkpoint "
                               f"but {list(target[name])} in the model", f"checkpoint {where}")


_EMPTY = "empty"  # stand-in item for an optimizer state without arrays (Orbax refuses empty trees)


def _opt_flat(opt_state) -> dict[str, Any]:
  flat = {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(opt_state))}
  return flat or {_EMPTY: np.zeros((), np.int8)}


def _abstract(tree):
  def one(x):
    sh = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)
  return jax.tree.map(one, tree)


@dataclasses.dataclass
class Restored:
  params: Any
  opt_state: Any
  step: int
  meta: dict


@contextlib.contextmanager
def _quiet():
  """Orbax's asynchronous restore of a corrupt step leaves failed tasks behind whose tracebacks
  (asyncio's "Task exception was never retrieved", tensorstore's "Event loop is closed") reach
  stderr by the hundred (~1,270 lines for a 30-layer model). Inside, sys.stderr is buffered and
  the asyncio logger muted; at the end the buffer is written to stderr if the yielded object's
  `replay` is True (set it False when a step failed: the output is its tracebacks), and dropped
  otherwise. ENGAGE_DEBUG=1: nothing is buffered."""
  state = types.SimpleNamespace(replay=True)
  if errors.debug():
    yield state
    return
  buf, real = io.StringIO(), sys.stderr
  alog = logging.getLogger("asyncio")
  level = alog.level
  sys.stderr = buf
  alog.setLevel(logging.CRITICAL)
  try:
    yield state
  finally:
    sys.stderr = real
    alog.setLevel(level)
    if state.replay and buf.getvalue():
      real.write(buf.getvalue())


class CheckpointManager:
  """Save / restore (params, opt_state, meta) per step under `directory`; keeps the last `keep`."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    if not read_only:
      os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep and keep > 0 else None, create=not read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
        read_only=read_only)
    handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._read_only = read_only

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, params: nnx.State, opt_state: Any, meta: Mapping[str, Any] | None = None
           ) -> None:
    """Writes step `step` (atomically; overwrites nothing: an existing step is skipped)."""
    if step in self._mgr.all_steps():
      return
    meta = dict(meta or {}, step=int(step), param_shapes=param_shapes(params))
    self._mgr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(flatten_params(params)),
        opt_state=ocp.args.StandardSave(_opt_flat(opt_state)),
        meta=ocp.args.JsonSave(meta)), force=True)
    self._mgr.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict:
    step = self._latest_or(step)
    out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def _latest_or(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def restore(self, params: nnx.State, opt_state: Any = None, step: int | None = None) -> Restored:
    """Restores step `step` (default latest) into the structure, dtypes and shardings of
    `params` / `opt_state` (opt_state=None: parameters only)."""
    step = self._latest_or(step)
    meta = self.read_meta(step)
    check_shapes(meta.get("param_shapes", {}), param_shapes(params), f"{self.directory}/{step}")
    items = {"params": ocp.args.StandardRestore(_abstract(flatten_params(params)))}
    target_n = len(jax.tree.leaves(opt_state)) if opt_state is not None else 0
    if opt_state is not None and target_n:
      saved = self._mgr.item_metadata(step)["opt_state"] or {}
      saved_n = 0 if _EMPTY in saved else len(saved)
      if saved_n != target_n:
        raise CheckpointMismatch(f"optimizer state has {saved_n} arrays, the current optimizer "
                                 f"{target_n} (different optimizer settings?)",
                                 f"checkpoint {self.directory}/{step}")
      items["opt_state"] = ocp.args.StandardRestore(_abstract(_opt_flat(opt_state)))
    out = self._mgr.restore(step, args=ocp.args.Composite(**items))
    new_params = unflatten_params(params, out["params"])
    new_opt = opt_state if opt_state is not None and not target_n else None
    if opt_state is not None and target_n:
      flat = out["opt_state"]
      new_opt = jax.tree.unflatten(jax.tree.structure(opt_state),
                                   [flat[k] for k in sorted(flat)])
    return Restored(new_params, new_opt, int(step), meta)

  def restore_intact(self, params: nnx.State, opt_state: Any = None,
                     warn: Callable[[str], None] | None = None) -> Restored | None:
    """The newest step that restores and has finite parameters (None: no steps at all). Corrupt
    newer steps are skipped with a warning (and moved aside unless read-only); a
    CheckpointMismatch is raised as is; CorruptCheckpoint if no step is intact."""
    skipped, notes, found = [], [], None
    try:
      with _quiet() as quiet:  # one line per skipped step, not Orbax's tracebacks (see _quiet)
        for step in sorted(self.all_steps(), reverse=True):
          try:
            r = self.restore(params, opt_state, step)
            bad = nonfinite_params(r.params)
            if bad:
              raise CorruptCheckpoint(f"non-finite values in parameter {bad!r}", f"{self.directory}/{step}")
          except CheckpointMismatch:
            raise
          except Exception as e:
            gc.collect()  # the failed step's orphaned tasks report now, inside the quiet window
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            skipped.append(step)
            msg = f"checkpoint {self.directory}/{step} is corrupt ({type(e).__name__}: {reason})"
            if not self._read_only:
              msg += f"; moved to {self._quarantine(step)}"
            notes.append(msg + "; falling back to an older step")
            continue
          if skipped:
            notes.append(f"resuming from step {step} of {self.directory} (skipped corrupt steps {skipped})")
          found = r
          break
        quiet.replay = not skipped
    finally:
      for note in notes:
        (warn or log.warning)(note)
    if found is not None:
      return found
    if skipped:
      raise CorruptCheckpoint(f"no intact checkpoint: steps {skipped} are all corrupt; delete the "
                              f"directory to start over", self.directory)
    return None

  def _quarantine(self, step: int) -> str:
    dest_dir = self.directory + ".corrupt"
    dest = os.path.join(dest_dir, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}")

    def move():
      os.makedirs(dest_dir, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), dest)
    multihost.main_write(move, what=dest_dir)  # process 0 moves it; every process then reloads
    self._mgr.reload()
    return dest

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()


def restore_latest(directory: str, params: nnx.State, opt_state: Any = None) -> Restored | None:
  """The latest checkpoint under `directory` restored like `params` / `opt_state`, or None."""
  if not os.path.isdir(directory):
    return None
  mgr = CheckpointManager(directory, read_only=True)
  try:
    return mgr.restore_intact(params, opt_state)
  finally:
    mgr.close()


def restore_model(model: nnx.Module, directory: str, step: int | None = None, variables=nnx.Param) -> int:
  """Loads the `variables` (an nnx filter: nnx.Param, or nnx.LoRAParam for a LoRA run's
  adapters, which need adapters of the checkpoint's rank in `model`) of a checkpoint into `model`
  in place; returns the step. Non-finite values are a CorruptCheckpoint."""
  mgr = CheckpointManager(directory, read_only=True)
  try:
    params = nnx.state(model, variables)
    r = mgr.restore(params, None, step) if step is not None else mgr.restore_intact(params)
    if r is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    bad = nonfinite_params(r.params)
    if bad:
      raise CorruptCheckpoint(f"non-finite values in parameter {bad!r}", f"{directory}/{r.step}")
    nnx.update(model, r.params)
    return r.step
  finally:
    mgr.close()


def model_from_checkpoint(directory: str, step: int | None = None, dtype=None):
  """A `CausalLM` built from the checkpoint's `model_config` meta, with its parameters."""
  mgr = CheckpointManager(directory, read_only=True)
  try:
    meta = None
    for s in ([step] if step is not None else sorted(mgr.all_steps(), reverse=True)):
      try:
        meta = mgr.read_meta(s)
        break
      except Exception as e:
        if step is not None:
          raise CorruptCheckpoint(f"unreadable metadata ({type(e).__name__})", f"{directory}/{s}") from e
    if meta is None:
      raise FileNotFoundError(f"no readable checkpoint in {directory}")
  finally:
    mgr.close()
  if "model_config" not in meta:
    raise ValueError(f"checkpoint {directory}: no model_config in its metadata; build the model "
                     f"yourself and use restore_model")
  model = CausalLM(ModelConfig(**meta["model_config"]), dtype=dtype or jnp.float32,
                   rngs=nnx.Rngs(0))
  restore_model(model, directory, step)
  return model


def export_hf(checkpoint_dir: str, out_dir: str, step: int | None = None, model=None) -> str:
  """Writes the checkpoint as an HF model dir (config.json + safetensors) via
  `models.save_pretrained`. model: an instance of the right architecture (default: built from
  the checkpoint's model_config). Returns out_dir."""
  if model is None:
    model = model_from_checkpoint(checkpoint_dir, step)
  else:
    restore_model(model, checkpoint_dir, step)
  models.save_pretrained(model, out_dir)
  return out_dir
