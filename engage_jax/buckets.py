"""Length buckets: the one place that says how a size is padded up, so that similar shapes share
one compiled function. Pure Python (no jax), at the bottom of the house.

Two ladders, each with its users' parameters (their sizes are what existing runs compiled for):
- `ladder(limit, minimum)`: a capped ladder of training lengths, doubling from `minimum` itself
  (not rounded to a power of two) up to `limit`, which is always the last rung: SFT batches
  (`data.sft.default_buckets`, min 32 by default) and DPO prompt / completion lengths (min 16).
  `fit(n, rungs)` is the rung a row of n tokens goes to.
- `bucket(n, minimum, half_steps)`: the uncapped rung of one size for sampling: a power of two, or
  with half_steps also 1.5x a power of two (`sampling`: batch rows, prompt and new-token lengths).
"""
from __future__ import annotations

from collections.abc import Sequence


def ladder(limit: int, minimum: int) -> tuple[int, ...]:
  """minimum, 2·minimum, 4·minimum, ... below limit, then limit: e.g. ladder(200, 32) =
  (32, 64, 128, 200); a minimum >= limit gives (limit,); a minimum below 1 counts as 1."""
  out, b = [], max(1, minimum)
  while b < limit:
    out.append(b)
    b *= 2
  out.append(limit)
  return tuple(out)


def fit(n: int, rungs: Sequence[int]) -> int:
  """The smallest of the ascending `rungs` that holds n (StopIteration when none does; callers
  check the largest first)."""
  return next(b for b in rungs if b >= n)


def bucket(n: int, minimum: int, *, half_steps: bool = True) -> int:
  """Smallest bucket >= max(n, minimum): a power of two, or (half_steps) also 1.5x a power of two
  (8, 12, 16, 24, 32, 48, ...), so padding wastes at most a third instead of half."""
  n = max(int(n), int(minimum))
  p2 = 1 << (n - 1).bit_length()
  if half_steps and p2 >= 4 and n <= 3 * p2 // 4:
    return 3 * p2 // 4
  return p2
