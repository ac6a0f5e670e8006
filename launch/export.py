"""Exports an Orbax training checkpoint as an HF model directory (config.json + safetensors) that
`transformers.AutoModelForCausalLM.from_pretrained` loads.

  python launch/export.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es \
      --model=dpo_agent [--step=N] [--out=DIR]

--model: which run of the workdir (sft_agent, sft_simulator, dpo_agent); default dpo_agent.
The checkpoint carries its model config, so no weights are needed besides it.
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
  path = checkpoint.export_hf(str(ckpt), str(out), step=_STEP.value)
  print(f"[engage_jax] exported {ckpt} → {path}")


if __name__ == "__main__":
  _common.run(main)
