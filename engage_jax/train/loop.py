"""One training loop for every objective (SFT, DPO): jit step, Optax, metrics, eval, checkpoints.

The NNX functional pattern keeps shardings and donation explicit:

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn(params, batch) -> (loss, metrics)       # a pure function of the Param state
    state = run(loss_fn, params, batches_factory, cfg, workdir, mesh=mesh, ...)
    nnx.update(model, state.params)

LoRA (engage_jax.models.lora): `graphdef, adapter, frozen, rest = lora.split_trainable(model)`;
`run(loss_fn, adapter, ..., frozen=frozen)` trains (and checkpoints, and keeps optimizer state
for) the adapter only; the frozen base weights are a sharded, non-donated jit argument and the
loss is called as `loss_fn(params, batch, frozen)`.

The jitted step takes `(params, opt_state, batch)` with `in_shardings` from
`engage_jax.sharding` (parameters per the logical rules, batch over data×fsdp), donates the
parameter and optimizer buffers, and runs gradient accumulation as a `lax.scan` over the A
micro-batches of a batch whose arrays are shaped `[A, B, ...]`.

Optimizer: `clip_by_global_norm(grad_clip)` → AdamW with linear warmup + cosine decay to
`learning_rate * min_lr_ratio`. A step whose loss or gradient norm is not finite leaves the state
untouched (so no NaN ever reaches a checkpoint) and stops the run with `NonFiniteLossError`
naming the step.

Metrics: every `log_every` steps the interval means of `loss`, `grad_norm`, the loss function's
own metrics, plus `learning_rate` and `tokens_per_s` go to the console (tqdm) and are appended to
`<workdir>/metrics.jsonl` (one JSON object per line with `"step"`; also TensorBoard scalars under
`<workdir>/tb`; eval lines have `"split":
"eval"`). On resume, lines past the restored step are dropped and the running sums of the
unfinished logging interval come back from the checkpoint, so the file is the loss curve of one
uninterrupted run (tokens_per_s aside: it is wall-clock).

Resume: from the newest *intact* checkpoint (`CheckpointManager.restore_intact`: a corrupt newer
step is skipped with a warning and moved aside). Optimizer settings (learning rate, warmup,
weight decay, clipping) may differ from the run that wrote the checkpoint, e.g. a lower learning
rate after a NaN stop; the schedule is rebuilt from the current settings.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from engage_jax import checkpoint as ckpt_lib, multihost, preemption, sharding as shd
from engage_jax.logprobs import token_logps
from engage_jax.progress import Scalars
from engage_jax.train.config import TrainConfig

LossFn = Callable[[nnx.State, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss (or gradient norm) is NaN/inf. `.step` is the 1-based step."""

  def __init__(self, step: int, loss: float, grad_norm: float, checkpoint_step: int | None):
    self.step = step
    where = (f"last good checkpoint: step {checkpoint_step}" if checkpoint_step is not None
             else "no checkpoint was written")
    resume = ("; rerun (e.g. with a lower learning rate) to resume from it" if checkpoint_step is not None
              else "")
    super().__init__(f"non-finite loss at step {step} (loss={loss}, grad_norm={grad_norm}); "
                     f"training stopped, the state was not updated; {where}{resume}")


# ---------------------------------------------------------------------------- optimizer
def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 → lr over warmup_steps, then cosine to lr * min_lr_ratio at total_steps."""
  warm = max(0, min(cfg.warmup_steps, total_steps - 1))
  decay = max(1, total_steps - warm)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warm else cfg.learning_rate, peak_value=cfg.learning_rate,
      warmup_steps=warm, decay_steps=warm + decay, end_value=cfg.learning_rate * cfg.min_lr_ratio)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                 optax.Schedule]:
  """clip_by_global_norm → AdamW(schedule). Returns (tx, schedule)."""
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip and cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                           weight_decay=cfg.weight_decay))
  return optax.chain(*parts), schedule


# ---------------------------------------------------------------------------- model helpers
def set_compute_dtype(model: nnx.Module, dtype) -> dict:
  """Sets every submodule's `dtype` (activations / matmuls) to `dtype`; returns the old values
  ({path: dtype}) for `restore_compute_dtype`. Parameters keep their own dtype."""
  old = {}
  for path, module in nnx.iter_modules(model):
    if hasattr(module, "dtype") and not isinstance(module, nnx.Variable):
      old[path] = module.dtype
      module.dtype = dtype
  return old


def restore_compute_dtype(model: nnx.Module, old: Mapping) -> None:
  for path, module in nnx.iter_modules(model):
    if path in old:
      module.dtype = old[path]


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, frozen: nnx.State | None = None):
  """The module of a (trainable, frozen, rest) split (`lora.split_trainable`); frozen None: (params, rest)."""
  return nnx.merge(graphdef, params, rest) if frozen is None else nnx.merge(graphdef, params, frozen, rest)


def lm_loss_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> LossFn:
  """Loss-masked token cross-entropy (mean over target tokens) for SFT batches
  {"input_ids", "loss_mask", "attention_mask"} [B, T]; loss_mask[t] = 1 means token t is a target
  predicted from logits[t-1]. Metrics: "tokens" (number of target tokens). With LoRA the loop
  passes the frozen base weights as a third argument."""

  def loss_fn(params, batch, frozen=None):
    model = merge_model(graphdef, params, rest, frozen)
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    lp = token_logps(logits[:, :-1], batch["input_ids"][:, 1:])         # [B, T-1]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32)
    n = jnp.sum(w)
    loss = -jnp.sum(lp * w) / jnp.maximum(n, 1.0)
    return loss, {"tokens": n}

  return loss_fn


# ---------------------------------------------------------------------------- shardings
def opt_state_sharding(tx: optax.GradientTransformation, opt_state, params_sharding, mesh: Mesh):
  """Optimizer-state shardings: parameter-shaped leaves (Adam moments) like the parameters,
  everything else (counts) replicated."""
  rep = NamedSharding(mesh, P())
  return optax.tree_map_params(tx, lambda _, s: s, opt_state, params_sharding,
                               transform_non_params=lambda _: rep)


def init_sharded(tx: optax.GradientTransformation, params: nnx.State, mesh: Mesh):
  """Places `params` on `mesh` by the sharding rules and initialises the optimizer state beside
  them. Returns (params, opt_state, params_sharding, opt_state_sharding)."""
  p_sh = shd.state_sharding(mesh, params)
  params = shd.put_tree(params, p_sh)
  opt_state = jax.jit(tx.init)(params)
  o_sh = opt_state_sharding(tx, opt_state, p_sh, mesh)
  return params, shd.put_tree(opt_state, o_sh), p_sh, o_sh


# ---------------------------------------------------------------------------- the step
def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh, params_sharding, opt_sharding, batch_example: Mapping[str, Any],
                    donate: bool = True, frozen_sharding=None):
  """jit step `(params, opt_state, batch[A, B, ...]) -> (params, opt_state, metrics)`; with
  `frozen_sharding` (LoRA) `(params, opt_state, batch, frozen)`: frozen weights get no gradient
  and are not donated.

  Gradients are those of one batch of all A*B rows (scan): each micro-batch's gradient and loss
  are weighted by what its loss is a mean over, metrics["tokens"] (SFT's target tokens) or else
  the sum of "row_weight" (DPO's real pairs), so micro-batches with fewer targets or padding rows
  count less, as they would in one large batch. metrics: "loss", "grad_norm" (before clipping),
  "learning_rate" (of this update), "finite" (1.0 if the update was applied) and the loss
  function's metrics (weighted means over micro-batches; "tokens" summed).
  """
  b_sh = {k: shd.batch_sharding(mesh, len(np.shape(v)), accum=True) for k, v in batch_example.items()}
  rep = NamedSharding(mesh, P())

  def step(params, opt_state, batch, *frozen):
    grad_fn = jax.value_and_grad(lambda p, mb: loss_fn(p, mb, *frozen), has_aux=True)

    def micro(acc, mb):
      (loss, aux), g = grad_fn(params, mb)
      w = aux["tokens"] if "tokens" in aux else jnp.sum(mb["row_weight"]) if "row_weight" in mb else 1.0
      w = jnp.asarray(w, jnp.float32)
      return (jax.tree.map(lambda s, x: s + w * x, acc[0], g), acc[1] + w), (loss, w, aux)

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0))
    if jax.tree.leaves(batch)[0].shape[0] == 1:  # one micro-batch: its own mean, no reweighting
      (loss, aux), grads = grad_fn(params, jax.tree.map(lambda x: x[0], batch))
      losses, ws, aux = loss[None], jnp.ones((1,), jnp.float32), jax.tree.map(lambda x: x[None], aux)
    else:
      (grads, total), (losses, ws, aux) = jax.lax.scan(micro, zeros, batch)
      total = jnp.where(total > 0, total, 1.0)
      grads = jax.tree.map(lambda g: g / total, grads)
    ws = ws / jnp.maximum(jnp.sum(ws), 1e-30)
    loss = jnp.sum(ws * losses)
    gnorm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)

    def update(p, o):
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o

    # a non-finite step leaves params and optimizer state as they were; a cond rather than a
    # select over every array, which cost as much again as the AdamW update itself on CPU
    new_params, new_opt = jax.lax.cond(finite, update, lambda p, o: (p, o), params, opt_state)
    counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    count = counts[0][1] if counts else None
    metrics = {k: (jnp.sum(v) if k == "tokens" else jnp.sum(ws * v)) for k, v in aux.items()}
    metrics.update(loss=loss, grad_norm=gnorm, finite=finite.astype(jnp.float32),
                   learning_rate=schedule(count) if count is not None else jnp.nan)
    return new_params, new_opt, metrics

  extra = () if frozen_sharding is None else (frozen_sharding,)
  return jax.jit(step, in_shardings=(params_sharding, opt_sharding, b_sh) + extra,
                 out_shardings=(params_sharding, opt_sharding, rep),
                 donate_argnums=(0, 1) if donate else ())


def make_eval_step(loss_fn: LossFn, mesh: Mesh, params_sharding, batch_example, frozen_sharding=None):
  """jit `(params, batch[B, ...]) -> metrics` (no gradients); `(params, batch, frozen)` with
  `frozen_sharding`."""
  b_sh = {k: shd.batch_sharding(mesh, len(np.shape(v))) for k, v in batch_example.items()}

  def step(params, batch, *frozen):
    loss, aux = loss_fn(params, batch, *frozen)
    return dict(aux, loss=loss)

  extra = () if frozen_sharding is None else (frozen_sharding,)
  return jax.jit(step, in_shardings=(params_sharding, b_sh) + extra, out_shardings=NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------- metrics file
class MetricsWriter:
  """Appends JSON lines to `<workdir>/metrics.jsonl`; `truncate_after(step)` drops later lines."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill
        if int(rec.get("step", 0)) <= step:
          keep.append(json.dumps(rec))
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("".join(k + "\n" for k in keep))
    os.replace(tmp, self.path)

  def write(self, rec: dict) -> None:
    if not multihost.is_main():  # process 0 keeps the metrics
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
      f.flush()
    if not hasattr(self, "_tb"):
      self._tb = Scalars(os.path.dirname(self.path))
    split = rec.get("split", "train")
    self._tb.write(int(rec.get("step", 0)), {f"{split}/{k}": v for k, v in rec.items() if k not in ("step", "split")})


def read_metrics(workdir: str, split: str = "train") -> list[dict]:
  """The records of `<workdir>/metrics.jsonl` of one split ("train" | "eval"), in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  out = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        rec = json.loads(line)
        if rec.get("split", "train") == split:
          out.append(rec)
  return out


def _fmt(rec: Mapping[str, Any]) -> str:
  keys = [k for k in rec if k not in ("step", "split", "epoch")]
  return " ".join(f"{k}={rec[k]:.4g}" if isinstance(rec[k], float) else f"{k}={rec[k]}" for k in keys)


# ---------------------------------------------------------------------------- batches
def stack_micro(batch: Mapping[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """[A*B, ...] → [A, B, ...]."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] % accum:
      raise ValueError(f"batch key {k!r}: {v.shape[0]} rows not divisible by grad_accum={accum}")
    out[k] = v.reshape((accum, v.shape[0] // accum) + v.shape[1:])
  return out


# ---------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class TrainState:
  """What `run` returns: the final parameters (same structure/shardings as given) and a summary."""
  params: nnx.State
  opt_state: Any
  step: int
  summary: dict


BatchesFactory = Callable[[dict | None], Iterable[Mapping[str, np.ndarray]]]


def run(loss_fn: LossFn, params: nnx.State, make_batches: BatchesFactory, cfg: TrainConfig,
        workdir: str, *, mesh: Mesh | None = None, total_steps: int,
        eval_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
        eval_loss_fn: LossFn | None = None, resume: bool = True,
        checkpoint_meta: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict], None] | None = None,
        count_tokens: Callable[[Mapping[str, np.ndarray]], float] | None = None,
        frozen: nnx.State | None = None) -> TrainState:
  """Trains `params` for `total_steps` optimizer updates.

  make_batches(data_state) returns an iterable of batches (dicts of numpy [A*B, ...]) that
  resumes at `data_state` (None = start) and has `.state()` (JSON-able position of the next
  batch). eval_batches() yields held-out batches [B, ...]; eval metrics are averaged weighted by
  metrics["tokens"] (else "row_weight" count, else 1). on_step(step, host_metrics) is called
  after every step (tests use it to pause/kill a run). checkpoint_meta: extra JSON for the
  checkpoint (e.g. the model config for `checkpoint.export_hf`). count_tokens(batch) gives the
  tokens of a batch for tokens/s (default: the sum of "attention_mask"). frozen: weights the
  loss needs but that are not trained (LoRA's base model): placed by the sharding rules, passed
  as `loss_fn(params, batch, frozen)`, never in the optimizer state or the checkpoints.
  """

  os.makedirs(workdir, exist_ok=True)
  mesh = mesh if mesh is not None else shd.make_mesh(data=1, devices=jax.devices()[:1])
  shd.check_batch(mesh, cfg.batch_size)
  tx, schedule = make_optimizer(cfg, total_steps)
  params, opt_state, p_sh, o_sh = init_sharded(tx, params, mesh)
  f_sh = None
  if frozen is not None:
    f_sh = shd.state_sharding(mesh, frozen)
    frozen = shd.put_tree(frozen, f_sh)
  extra = () if frozen is None else (frozen,)

  writer = MetricsWriter(workdir)
  manager = ckpt_lib.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                       keep=cfg.keep_checkpoints)
  step, data_state, rng = 0, None, jax.random.key_data(jax.random.key(cfg.seed))
  interval = _Interval()
  restored = manager.restore_intact(params, opt_state, warn=_warn) if resume else None
  if restored is not None:
    params, opt_state = restored.params, restored.opt_state
    step, data_state = restored.step, restored.meta.get("data_state")
    rng = np.asarray(restored.meta.get("rng", np.asarray(rng).tolist()), np.uint32)
    interval = _Interval.from_json(restored.meta.get("metrics_interval"))
    print(f"resumed from {manager.directory} at step {step}")
  multihost.main_write(writer.truncate_after, step, what=writer.path)
  if step == 0 and not resume and os.path.exists(writer.path):
    multihost.main_write(os.remove, writer.path, what=writer.path)

  def save(at_step: int) -> None:
    meta = dict(checkpoint_meta or {}, data_state=data_state_now(), rng=np.asarray(rng).tolist(),
                total_steps=total_steps, metrics_interval=interval.to_json())
    manager.save(at_step, params, opt_state, meta)

  batches = make_batches(data_state)
  it = iter(batches)
  data_state_now = lambda: batches.state() if hasattr(batches, "state") else None

  train_step = eval_step = None
  summary: dict[str, Any] = {"start_step": step}

  def evaluate(at_step: int) -> dict | None:
    nonlocal eval_step
    if eval_batches is None:
      return None
    sums: dict[str, float] = {}
    total = 0.0
    for b in eval_batches():
      b = {k: np.asarray(v) for k, v in b.items()}
      if eval_step is None or getattr(eval_step, "_keys", None) != tuple(sorted(b)):
        eval_step = make_eval_step(eval_loss_fn or loss_fn, mesh, p_sh, b, f_sh)
        eval_step._keys = tuple(sorted(b))
      placed = shd.place_batch(b, mesh)
      m = shd.to_host(eval_step(params, placed, *extra))
      w = float(m.get("tokens", b["row_weight"].sum() if "row_weight" in b else 1.0))
      total += w
      for k, v in m.items():
        if k != "tokens":
          sums[k] = sums.get(k, 0.0) + float(v) * w
    rec = {"step": at_step, "split": "eval", **{k: v / max(total, 1e-9) for k, v in sums.items()}}
    writer.write(rec)
    tqdm.write(f"[eval] step {at_step}: {_fmt(rec)}")
    return rec

  if step == 0 and cfg.eval_at_start:
    summary["eval_start"] = evaluate(0)
  bar = tqdm(total=total_steps, initial=step, disable=not cfg.progress, desc="train", dynamic_ncols=True)
  last_saved = manager.latest_step()
  try:
    with preemption.deferred():
      while step < total_steps:
        try:
          batch = next(it)
        except StopIteration:
          raise ValueError(f"training data ran out at step {step} of {total_steps}") from None
        batch = stack_micro(batch, cfg.grad_accum)
        if train_step is None:
          train_step = make_train_step(loss_fn, tx, schedule, mesh, p_sh, o_sh, batch, frozen_sharding=f_sh)
        interval.tokens += float(count_tokens(batch)) if count_tokens else float(np.sum(batch.get("attention_mask", 0)))
        placed = shd.place_batch(batch, mesh, accum=True)
        params, opt_state, metrics = train_step(params, opt_state, placed, *extra)
        metrics = {k: float(v) for k, v in shd.to_host(metrics).items()}
        step += 1
        if metrics.pop("finite") < 1.0:
          raise NonFiniteLossError(step, metrics["loss"], metrics["grad_norm"], last_saved)
        interval.add(metrics)
        bar.update(1)
        if step % max(cfg.log_every, 1) == 0 or step == total_steps:
          rec = {"step": step, **interval.means(), "learning_rate": metrics["learning_rate"],
                 "tokens_per_s": interval.tokens / max(interval.elapsed(), 1e-9)}
          writer.write(rec)
          bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['learning_rate']:.2e}")
          if not cfg.progress:
            print(f"step {step}: {_fmt(rec)}", flush=True)
          summary["last_train"] = rec
          interval = _Interval()
        if cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
          evaluate(step)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total_steps:
          save(step)
          last_saved = step
        if on_step is not None:
          on_step(step, metrics)
        # a safe point: on a stop request, checkpoint this step (unless just saved), then stop
        preemption.check(on_stop=None if last_saved == step else functools.partial(save, step),
                         where=f"step {step}")
  finally:
    bar.close()
    manager.wait()
  summary["eval_end"] = evaluate(step)
  summary["step"] = step
  manager.close()
  return TrainState(params=params, opt_state=opt_state, step=step, summary=summary)


class _Interval:
  """Running sums of the current logging interval (checkpointed, so a resume continues them)."""

  def __init__(self, sums: dict | None = None, n: int = 0, tokens: float = 0.0, seconds: float = 0.0):
    self.sums, self.n, self.tokens = dict(sums or {}), int(n), float(tokens)
    self.t0 = time.perf_counter() - float(seconds)

  def add(self, metrics: Mapping[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.n += 1

  def means(self) -> dict[str, float]:
    return {k: v / max(self.n, 1) for k, v in self.sums.items()}

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def to_json(self) -> dict:
    return {"sums": self.sums, "n": self.n, "tokens": self.tokens, "seconds": self.elapsed()}

  @classmethod
  def from_json(cls, d: Mapping | None) -> _Interval:
    return cls(**d) if d else cls()


def _warn(msg: str) -> None:
  print(f"warning: {msg}", file=sys.stderr, flush=True)


def total_steps_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
  """cfg.steps, or num_epochs passes of `steps_per_epoch` micro-batches (rounded up)."""
  if cfg.steps > 0:
    return int(cfg.steps)
  return max(1, math.ceil(cfg.num_epochs * steps_per_epoch / cfg.grad_accum))
