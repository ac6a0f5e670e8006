"""What launch/export.py does: an Orbax training checkpoint of a workdir's run → an HF model dir
(config.json + model.safetensors), and for a LoRA run also a PEFT adapter dir.

    export_run(cfg, workdir, "dpo_agent", out, step=None, force=False)

Refused up front, one line each: an `out` that is not empty (unless `force`, which removes what an
earlier export wrote there: config.json, *.safetensors shards and their index, adapter/, base/);
a checkpoint step that cannot be read (the latest one unless `step`: never an older step silently).
A LoRA run whose base model is not an HF directory (a seed-initialised or GGUF base) exports that
base as OUT/base, and the adapter's `base_model_name_or_path` points at it, so PEFT can load it.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from flax import nnx

from engage_jax import checkpoint, build, models
from engage_jax.errors import InputError
from engage_jax.models import lora
from engage_jax.workdir import Workdir

OUT_DIRS = ("adapter", "base")


def _export_file(name: str) -> bool:
  return name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json", ".safetensors.tmp"))


def prepare_out(out: str | Path, force: bool = False) -> Path:
  """`out` ready to write into (see the module docstring); InputError naming --out otherwise."""
  out = Path(out)
  if out.exists() and not out.is_dir():
    raise InputError("is a file, not a directory", f"--out={out}")
  entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
  if entries and not force:
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise InputError(f"is not empty ({shown}); choose an empty --out, or pass --force to replace the "
                     "model files an earlier export wrote there", f"--out={out}")
  for name in entries:
    p = out / name
    if name in OUT_DIRS and p.is_dir():
      shutil.rmtree(p)
    elif _export_file(name) and p.is_file():
      p.unlink()
  return out


def checked_step(ckpt: str | Path, step: int | None = None) -> tuple[int, dict, list[int]]:
  """(step, its meta, all steps): `step` or the latest; InputError if there is none,
  CorruptCheckpoint naming the step (and an older one to pass as --step) if its metadata cannot
  be read."""
  ckpt = Path(ckpt)
  if not ckpt.is_dir():
    raise InputError(f"no checkpoints (run the {ckpt.parent.name} stage first)", str(ckpt))
  mgr = checkpoint.CheckpointManager(str(ckpt), read_only=True)
  try:
    steps = sorted(mgr.all_steps())
    if not steps:
      raise InputError(f"no checkpoints (run the {ckpt.parent.name} stage first)", str(ckpt))
    if step is not None and step not in steps:
      raise InputError(f"no checkpoint at step {step}; steps: {steps}", f"--step={step}")
    step = steps[-1] if step is None else step
    try:
      meta = mgr.read_meta(step)
    except Exception as e:
      raise corrupt(ckpt, step, steps, e) from None
  finally:
    mgr.close()
  return step, meta, steps


def corrupt(ckpt: Path, step: int, steps: list[int], e: BaseException) -> checkpoint.CorruptCheckpoint:
  """The error for an unreadable step, naming it and the older steps one could export instead."""
  reason = " ".join(str(getattr(e, "what", e)).split())[:160] or type(e).__name__
  older = [s for s in steps if s < step]
  hint = f"export an older step with --step={older[-1]} (steps: {steps})" if older else "no older step"
  return checkpoint.CorruptCheckpoint(f"checkpoint is corrupt ({type(e).__name__}: {reason}); {hint}",
                                      f"{ckpt}/{step}")


def export_run(cfg, workdir: str | Path, run: str, out: str | Path | None = None, step: int | None = None,
               force: bool = False) -> dict:
  """Exports `run` (sft_agent | sft_simulator | dpo_agent) of `workdir`; returns {"step", "hf",
  and for LoRA "adapter" (+ "base" when written)}."""
  wd = Path(workdir)
  if not wd.is_dir():
    raise InputError("no such work directory", f"--workdir={wd}")
  ckpt = wd / run / "checkpoints"
  step, meta, steps = checked_step(ckpt, step)
  out = prepare_out(Path(out) if out else wd / "export" / run, force)
  try:
    if "lora" in meta:
      return dict(export_lora(cfg, wd, run, ckpt, out, meta, step), step=step)
    checkpoint.export_hf(str(ckpt), str(out), step=step)
  except checkpoint.CheckpointMismatch:
    raise
  except Exception as e:
    if isinstance(e, InputError) and not isinstance(e, checkpoint.CorruptCheckpoint):
      raise
    raise corrupt(ckpt, step, steps, e) from None
  return {"step": step, "hf": out}


def export_lora(cfg, wd: Path, run: str, ckpt: Path, out: Path, meta: dict, step: int) -> dict:
  """Base model (as the pipeline built it) + the checkpoint's adapter → the merged HF dir `out`, the
  PEFT dir `out/adapter`, and `out/base` when the base is not an HF directory already."""

  role = "simulator" if run == "sft_simulator" else "agent"
  if run == "dpo_agent":
    base_path = str(wd / "sft_agent" / "hf")
    model = build.load_model(cfg, base_path)
  else:
    base_path = cfg.model[role].path
    model = build.new_model(cfg, role, build.load_tokenizer(Workdir(str(wd))), adapters=False)
  out = {"hf": out}
  if not (Path(base_path) / "config.json").is_file():  # seed-initialised or GGUF: PEFT needs an HF base
    out["base"] = models.save_pretrained(model, out["hf"] / "base")
    base_path = str(out["base"].resolve())
  lcfg = dataclasses.replace(lora.LoraConfig.from_any(meta["lora"]), path="", init="default")
  lora.apply_lora(model, lcfg, where=f"{ckpt} (lora meta)")
  checkpoint.restore_model(model, str(ckpt), step, variables=nnx.LoRAParam)
  models.save_pretrained(lora.merge(model), out["hf"])
  out["adapter"] = lora.save_peft(model, out["hf"] / "adapter", base_model_name_or_path=base_path)
  return out
