"""SFT of the agent and the user simulator.

  python launch/sft.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

Stages it needs that are not done yet run first; done stages are skipped.
"""
import _common

if __name__ == "__main__":
  _common.run_stages(("sft_agent", "sft_simulator",))
