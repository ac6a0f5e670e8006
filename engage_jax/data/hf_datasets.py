"""The one place that calls `datasets.load_dataset` on local files: the cache directory, quiet
progress, and "which row was bad" for the errors `datasets` raises without naming one.

Cache: `cache_dir` argument, else $ENGAGE_DATASETS_CACHE, else ~/.cache/engage_jax/datasets (the
Arrow copies of the corpora and pairs files, and the tokenized SFT examples of `data.sft`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import datasets

datasets.disable_progress_bars()


def cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
  """The datasets cache directory to use (see the module docstring)."""
  if cache_dir:
    return os.fspath(cache_dir)
  return os.environ.get("ENGAGE_DATASETS_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "engage_jax", "datasets")


def load_local(kind: str, files: Sequence[str | os.PathLike], *, features: datasets.Features | None = None,
               cache: str | os.PathLike | None = None, **kw) -> datasets.Dataset:
  """`datasets.load_dataset(kind, data_files=files, split="train")` ("json" | "csv"), rows in file
  order. Raises what `datasets` raises; the callers turn it into a line naming the file and row."""
  files = [os.path.abspath(os.fspath(f)) for f in files]
  logger = logging.getLogger("datasets")
  level = logger.level
  logger.setLevel(logging.CRITICAL)  # its "Failed to load JSON" lines: our one error line says it
  try:
    ds = datasets.load_dataset(kind, data_files=files, split="train", features=features,
                               cache_dir=cache_dir(cache), **kw)
  finally:
    logger.setLevel(level)
  ds.data.table.validate(full=True)  # pyarrow's JSON reader keeps invalid UTF-8 in strings: refuse it here
  return ds


def nonblank_lines(path: str | os.PathLike) -> list[int]:
  """1-based numbers of the non-blank lines of a JSON-lines file: row i of its dataset is line
  `nonblank_lines(path)[i]` (pyarrow skips blank lines)."""
  with open(path, "rb") as f:
    return [i for i, line in enumerate(f, 1) if line.strip()]


def conforms(got, want) -> bool:
  """True when the inferred features `got` have the declared types `want` wherever both name a
  field (structs, lists, strings...); extra fields and all-null fields pass. A file whose rows
  mix types (a number where a string belongs) infers another type, or a JSON-encoded field."""
  if isinstance(got, datasets.Value) and got.dtype == "null":
    return True
  if isinstance(want, dict):
    return isinstance(got, dict) and all(conforms(got[k], want[k]) for k in got if k in want)
  if isinstance(want, (datasets.List, datasets.LargeList)):
    return isinstance(got, (datasets.List, datasets.LargeList)) and conforms(got.feature, want.feature)
  return got == want
