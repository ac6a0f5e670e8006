"""Real PersuasionForGood data, tiny models from scratch on CPU.

  python launch/pipeline.py --config=configs/p4g_tiny.py \
      --config.data.path=../shared/data/p4g --workdir=workdirs/p4g_tiny
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import esconv_tiny


def get_config():
  c = esconv_tiny.get_config()
  c.name = "p4g_tiny"
  c.task = "p4g"
  c.data.source = "p4g"
  c.search.max_turns = 10
  c.eval.max_agent_turns = 10
  return c
