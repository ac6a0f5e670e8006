"""DPO of the agent on the search's pairs, or on a preference dataset from elsewhere.

  python launch/dpo.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es
  python launch/dpo.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es --pairs=DIR [--out=DIR2]

Stages it needs that are not done yet run first; done stages are skipped.
--pairs: a saved `datasets` dataset in TRL's conversational preference format (`prompt`, `chosen`,
`rejected` message lists; e.g. `launch/export.py --dataset_out`) or JSON-lines files of such rows
(comma-separated); the workdir's SFT agent (stages tokenizer and sft_agent, run if needed) is trained
on it into --out (default <workdir>/dpo_pairs: checkpoints, hf/), through the same code as the
pipeline's dpo stage (pipeline.train_dpo_agent → train.pair_data). The pipeline's own stages and
outputs are not touched.
"""
from pathlib import Path

import _common
from absl import flags

from engage_jax import pipeline
from engage_jax.train import pair_data

_PAIRS = flags.DEFINE_list("pairs", None, "Train on this preference dataset dir (or JSON-lines files) "
                           "instead of the search's pairs.")
_OUT = flags.DEFINE_string("out", None, "With --pairs: output dir (default <workdir>/dpo_pairs).")


def main():
  cfg, workdir = _common.config(), _common.workdir()
  if not _PAIRS.value:
    pipeline.run(cfg, workdir, pipeline.with_dependencies(("dpo",)), redo=_common.redo())
    return
  n = len(pair_data.read_pair_files(_PAIRS.value))  # bad rows: one line, before any model work
  wd = pipeline.run(cfg, workdir, pipeline.with_dependencies(("sft_agent",)), redo=_common.redo())
  out = Path(_OUT.value or wd.path("dpo_pairs"))
  wd.lock()
  try:
    summary = pipeline.train_dpo_agent(cfg, wd, list(_PAIRS.value), out)
  finally:
    wd.unlock()
  print(f"[engage_jax] DPO on {n} pairs of {', '.join(_PAIRS.value)} → {out / 'hf'} "
        f"({summary.get('total_steps')} steps)", flush=True)


if __name__ == "__main__":
  _common.run(main)
