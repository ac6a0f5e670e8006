"""Loading configs/*.py by path, as the launchers' --config flag does (configs/ on sys.path)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_config(path: Path, source: str | None = None):
  """`get_config()` of the config file `path`; with `source`, of that text in its place."""
  spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO / "configs"))
  try:
    if source is None:
      spec.loader.exec_module(mod)
    else:
      exec(compile(source, str(path), "exec"), mod.__dict__)
    return mod.get_config()
  finally:
    sys.path.remove(str(REPO / "configs"))
