"""DPO of the agent on the search's pairs.

  python launch/dpo.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

Stages it needs that are not done yet run first; done stages are skipped.
"""
import _common

if __name__ == "__main__":
  _common.run_stages(("dpo",))
