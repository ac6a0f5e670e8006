"""The whole pipeline: tokenizer → SFT agent + simulator → evaluate SFT → i×MCTS → DPO →
evaluate DPO → report. Done stages are skipped; an interrupted run resumes.

  python launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

Each stage records the config values it depends on. A changed value is used by the stages that
have not run yet; a done stage whose values changed is refused, naming the keys, until
`--redo=STAGE[,STAGE]` reruns it and everything downstream of it (the other stages are kept):

  python launch/pipeline.py ... --config.search.agent_sampling.top_p=0.8 --redo=search
"""
from __future__ import annotations

import _common
from absl import flags

from engage_jax import pipeline

_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: all, in order).")


def main():
  stages = tuple(_STAGES.value) if _STAGES.value else pipeline.STAGES
  wd = pipeline.run(_common.config(), _common.workdir(), stages, redo=_common.redo())
  report = wd.path("report.json")
  if report.exists():
    print(f"[engage_jax] report: {report} (and report.md, plots) in {wd.root}")


if __name__ == "__main__":
  _common.run(main)
