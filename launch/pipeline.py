"""The whole pipeline: tokenizer → SFT agent + simulator → evaluate SFT → i×MCTS → DPO →
evaluate DPO → report. Done stages are skipped; an interrupted run resumes.

  python launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

A done stage is refused only when a config value that it depends on changed (the error names the
keys); `--redo=STAGE[,STAGE]` reruns those stages and everything downstream of them and keeps the
rest, e.g. `--redo=search` after changing `--config.search.top_p`... only needed once the search
has run; before that the new value is simply used.
"""
from __future__ import annotations

import _common
from absl import flags

_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: all, in order).")


def main():
  from engage_jax import pipeline
  stages = tuple(_STAGES.value) if _STAGES.value else pipeline.STAGES
  wd = pipeline.run(_common.config(), _common.workdir(), stages, redo=_common.redo())
  report = wd.path("report.json")
  if report.exists():
    print(f"[engage_jax] report: {report} (and report.md, plots) in {wd.root}")


if __name__ == "__main__":
  _common.run(main)
