"""Exports an Orbax training checkpoint as an HF model directory (config.json + safetensors) that
`transformers.AutoModelForCausalLM.from_pretrained` loads, or the search's preference data as a
`datasets` dataset (TRL's conversational format).

  python launch/export.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es \
      --model=dpo_agent [--step=N] [--out=DIR] [--force]
  python launch/export.py --workdir=workdirs/sandbox_es --dataset_out=DIR [--format=dpo|kto] [--force]

--dataset_out (no --config needed): `datasets.load_from_disk(DIR)` opens it; dpo rows are the
pipeline's pairs (prompt, chosen, rejected + the search's columns), kto rows every scored child
of the trees labelled against its siblings' mean; DIR/README.md is the dataset card. See
engage_jax/pairs_dataset.py.

--model: which run of the workdir (sft_agent, sft_simulator, dpo_agent); default dpo_agent.
The checkpoint carries its model config, so no weights are needed besides it.
--out must be empty or new; --force replaces the model files of an earlier export there.
Without --step the latest step is exported; a corrupt one is an error naming it (never an
older step silently).

A LoRA run (`model.<role>.lora.rank` > 0) checkpoints the adapter only: the base model is rebuilt
as the pipeline built it (`model.<role>.path`, or the SFT agent's `hf/` for dpo_agent), and the
export writes both the merged HF dir (OUT) and the PEFT adapter dir OUT/adapter
(`adapter_config.json` + `adapter_model.safetensors`, for `peft.PeftModel.from_pretrained(base, dir)`);
a base that is not an HF directory (seed-initialised, GGUF) is written to OUT/base, and the
adapter's `base_model_name_or_path` names it. See engage_jax/export.py.
"""
import shlex
import sys

import _common
from absl import app, flags

from engage_jax import export, pairs_dataset

_MODEL = flags.DEFINE_enum("model", "dpo_agent", ["sft_agent", "sft_simulator", "dpo_agent"], "Run to export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output dir (default: <workdir>/export/<model>); must be empty.")
_FORCE = flags.DEFINE_bool("force", False, "Export into a non-empty --out (--dataset_out), replacing its model "
                           "files (the dataset an earlier export wrote there).")
_DATASET_OUT = flags.DEFINE_string("dataset_out", None, "Write the search's preference data as a dataset here "
                                   "(instead of a model).")
_FORMAT = flags.DEFINE_enum("format", "dpo", ["dpo", "kto"], "With --dataset_out: dpo pairs or kto rows.")


def main():
  if _DATASET_OUT.value:
    command = shlex.join(["python", "launch/export.py", *sys.argv[1:]])
    got = pairs_dataset.export_dataset(_common.workdir(), _DATASET_OUT.value, _FORMAT.value, command=command,
                                       force=_FORCE.value)
    labels = f" ({got['desirable']} desirable, {got['undesirable']} undesirable)" if _FORMAT.value == "kto" else ""
    print(f"[engage_jax] exported {got['rows']} {_FORMAT.value} rows{labels} → {got['out']} (datasets.load_from_disk)")
    return
  if _common.config() is None:
    raise app.UsageError("--config is required, e.g. --config=configs/sandbox_es.py (or --dataset_out)")
  got = export.export_run(_common.config(), _common.workdir(), _MODEL.value, _OUT.value, _STEP.value,
                          _FORCE.value)
  ckpt = f"{_common.workdir()}/{_MODEL.value}/checkpoints/{got['step']}"
  if "adapter" in got:
    base = f", base {got['base']}" if "base" in got else ""
    print(f"[engage_jax] exported {ckpt} → {got['hf']} (merged) and {got['adapter']} (PEFT adapter{base})")
    return
  print(f"[engage_jax] exported {ckpt} → {got['hf']}")


if __name__ == "__main__":
  _common.run(main, require_config=False)
