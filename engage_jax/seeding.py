"""Derived seeds: the one place that turns a run's seed and a few integer keys (round, call,
shard, turn, ...) into the seed of one piece of work, stably across runs and platforms.

    seeding.sub_seed(seed, *keys)            # 31-bit: search rounds, envs, shards, human-eval turns
    seeding.sub_seed(seed, call, bits=32)    # 32-bit: the rollout's generate calls
    seeding.sample_seed(seed, sample, chunk) # evaluation's simulate calls (an affine rule)

Each caller keeps the width and rule its seeds always had, so every derived seed is unchanged.
"""
from __future__ import annotations

import numpy as np


def sub_seed(seed: int, *keys: int, bits: int = 31) -> int:
  """A `bits`-bit seed (31 or 32) from `seed` (taken mod 2^32) and non-negative integer keys:
  numpy's SeedSequence over [seed, *keys], its first 32-bit word, masked to `bits`."""
  if bits not in (31, 32):
    raise ValueError(f"sub_seed: bits must be 31 or 32, got {bits!r}")
  state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(1)[0]
  return int(state & ((1 << bits) - 1))


def sample_seed(seed: int, sample: int, chunk: int) -> int:
  """Deterministic seed of one evaluation `simulate` call (sample repeat `sample`, condition chunk
  `chunk`): (seed·1000003 + sample·10007 + chunk) mod (2^31 - 1)."""
  return int((seed * 1_000_003 + sample * 10_007 + chunk) % (2 ** 31 - 1))
