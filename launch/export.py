"""Exports an Orbax training checkpoint as an HF model directory (config.json + safetensors) that
`transformers.AutoModelForCausalLM.from_pretrained` loads.

  python launch/export.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es \
      --model=dpo_agent [--step=N] [--out=DIR]

--model: which run of the workdir (sft_agent, sft_simulator, dpo_agent); default dpo_agent.
The checkpoint carries its model config, so no weights are needed besides it.

A LoRA run (`model.<role>.lora.rank` > 0) checkpoints the adapter only: the base model is rebuilt
as the pipeline built it (`model.<role>.path`, or the SFT agent's `hf/` for dpo_agent), and the
export writes both the merged HF dir (OUT) and the PEFT adapter dir OUT/adapter
(`adapter_config.json` + `adapter_model.safetensors`, for `peft.PeftModel.from_pretrained(base, dir)`).
"""
import _common
from absl import flags

_MODEL = flags.DEFINE_enum("model", "dpo_agent", ["sft_agent", "sft_simulator", "dpo_agent"], "Run to export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output dir (default: <workdir>/export/<model>).")


def main():
  from pathlib import Path

  from engage_jax import checkpoint
  from engage_jax.errors import InputError
  wd = Path(_common.workdir())
  if not wd.is_dir():
    raise InputError("no such work directory", f"--workdir={wd}")
  ckpt = wd / _MODEL.value / "checkpoints"
  if not ckpt.is_dir():
    raise InputError(f"no checkpoints (run the {_MODEL.value} stage first)", str(ckpt))
  if _STEP.value is not None:
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    if _STEP.value not in steps:
      raise InputError(f"no checkpoint at step {_STEP.value}; steps: {steps}", f"--step={_STEP.value}")
  out = Path(_OUT.value) if _OUT.value else wd / "export" / _MODEL.value
  mgr = checkpoint.CheckpointManager(str(ckpt), read_only=True)
  try:
    meta = mgr.read_meta(_STEP.value) if mgr.all_steps() else {}
  finally:
    mgr.close()
  if "lora" in meta:
    path, adapter = export_lora(_common.config(), wd, _MODEL.value, str(ckpt), out, meta, _STEP.value)
    print(f"[engage_jax] exported {ckpt} → {path} (merged) and {adapter} (PEFT adapter)")
    return
  path = checkpoint.export_hf(str(ckpt), str(out), step=_STEP.value)
  print(f"[engage_jax] exported {ckpt} → {path}")


def export_lora(cfg, wd, run: str, ckpt: str, out, meta: dict, step=None):
  """Base model (as the pipeline built it) + the checkpoint's adapter → (merged HF dir `out`,
  PEFT dir `out/adapter`)."""
  import dataclasses
  from pathlib import Path

  from flax import nnx

  from engage_jax import checkpoint, models, pipeline
  from engage_jax.models import lora
  role = "simulator" if run == "sft_simulator" else "agent"
  if run == "dpo_agent":
    base_path = str(Path(wd) / "sft_agent" / "hf")
    model = pipeline.load_model(cfg, base_path)
  else:
    base_path = cfg.model[role].path
    model = pipeline.new_model(cfg, role, pipeline.load_tokenizer(pipeline.Workdir(str(wd))), adapters=False)
  lcfg = dataclasses.replace(lora.LoraConfig.from_any(meta["lora"]), path="", init="default")
  lora.apply_lora(model, lcfg, where=f"{ckpt} (lora meta)")
  checkpoint.restore_model(model, ckpt, step, variables=nnx.LoRAParam)
  out = Path(out)
  models.save_pretrained(lora.merge(model), out)
  adapter = lora.save_peft(model, out / "adapter", base_model_name_or_path=base_path)
  return out, adapter


if __name__ == "__main__":
  _common.run(main)
