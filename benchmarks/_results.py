"""What every benchmark writes beside its figures: the machine it ran on, and the JSON file."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(**extra) -> dict:
  """CPU count, platform, load average and the versions of the libraries compared (those imported)."""
  import sys
  out = dict(extra, cpus=os.cpu_count(), platform=platform.platform(), loadavg_1m=os.getloadavg()[0])
  for name in ("jax", "torch", "transformers", "trl"):
    if name in sys.modules:
      out[name] = sys.modules[name].__version__
  return out


def write(res: dict, out: str | os.PathLike) -> dict:
  """Writes `res` as indented JSON to `out` (parents made) and prints it."""
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  Path(out).write_text(json.dumps(res, indent=2) + "\n")
  print(json.dumps(res, indent=2))
  return res
