"""Engagement evaluation of the SFT and DPO agents, then the report.

  python launch/evaluate.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

Stages it needs that are not done yet run first; done stages are skipped.
"""
import _common

if __name__ == "__main__":
  _common.run_stages(("eval_sft", "eval_dpo", "report",))
