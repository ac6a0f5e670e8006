"""Embedded sandbox world, P4G-like task (donation outcome): tiny models trained from scratch.

  python launch/pipeline.py --config=configs/sandbox_p4g.py --workdir=workdirs/sandbox_p4g
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base


def get_config():
  c = base.get_config()
  c.name = "sandbox_p4g"
  c.task = "p4g"
  return c
