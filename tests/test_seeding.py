"""The one seed-derivation module: every derived seed pinned to the value it had before the helpers
that computed it (search.env._sub_seed, rollout._call_seed, evaluate.sample_seed,
human_eval.store.turn_seed) shared it (issue 15)."""
from __future__ import annotations

import numpy as np
import pytest

from engage_jax import evaluate, seeding
from engage_jax.human_eval.store import turn_seed


def _old_sub_seed(seed, *keys):
  return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


def _old_call_seed(seed, call):
  return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, call]).generate_state(1)[0])


def test_pinned_values():
  assert [seeding.sub_seed(0, 3, 0), seeding.sub_seed(123, 7, 1), seeding.sub_seed(-1, 2),
          seeding.sub_seed(2 ** 40 + 5, 0)] == [465539299, 1615137965, 1874926788, 16823399]
  assert [seeding.sub_seed(0, 0, bits=32), seeding.sub_seed(42, 3, bits=32),
          seeding.sub_seed(-7, 11, bits=32)] == [2968811710, 2541583436, 3121714132]
  assert [seeding.sample_seed(0, 0, 0), seeding.sample_seed(5, 2, 3),
          seeding.sample_seed(10 ** 9, 7, 9)] == [0, 5020032, 1470040744]
  assert evaluate.sample_seed is seeding.sample_seed
  assert [turn_seed(1, 2, 3), turn_seed(-4, 0, 9)] == [1674706048, 581129592]


def test_same_as_the_old_helpers():
  for seed in (0, 1, 7, 12345, 2 ** 31 - 1, 2 ** 32 + 3, -5, np.int64(99)):
    for keys in ((), (0,), (3, 1), (7919, 2), (5, 0, 1), (2 ** 31, 4)):
      assert seeding.sub_seed(seed, *keys) == _old_sub_seed(seed, *keys)
    for call in (0, 1, 2, 10, 999):
      assert seeding.sub_seed(seed, call, bits=32) == _old_call_seed(seed, call)


def test_bits_checked():
  with pytest.raises(ValueError):
    seeding.sub_seed(0, 1, bits=16)
