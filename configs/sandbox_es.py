"""Embedded sandbox world, ES-like task: tiny models trained from scratch; the default demo.

  python launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

(`make demo` runs exactly this.) No downloads: the corpus is generated (engage_jax.data.sandbox).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base


def get_config():
  c = base.get_config()
  c.name = "sandbox_es"
  return c
