"""The one bucketing module: every size that SFT, DPO and sampling padded to before it existed is
pinned here against the three rules as they were written out (issue 15)."""
from __future__ import annotations

from engage_jax import buckets, sampling
from engage_jax.data import sft


def _old_default_buckets(max_len, min_bucket=32):
  out, b = [], min_bucket
  while b < max_len:
    out.append(b)
    b *= 2
  out.append(max_len)
  return tuple(out)


def _old_dpo_buckets(limit, min_bucket):
  out, b = [], max(1, min_bucket)
  while b < limit:
    out.append(b)
    b *= 2
  return out + [limit]


def _old_sampling_bucket(n, minimum, *, half_steps=True):
  n = max(int(n), int(minimum))
  p2 = 1 << (n - 1).bit_length()
  if half_steps and p2 >= 4 and n <= 3 * p2 // 4:
    return 3 * p2 // 4
  return p2


def test_examples():
  assert sft.default_buckets(200) == (32, 64, 128, 200)
  assert buckets.ladder(96, 16) == (16, 32, 64, 96) and buckets.ladder(24, 256) == (24,)
  assert [sampling.bucket(n, 8) for n in (1, 9, 13, 17, 25, 33)] == [8, 12, 16, 24, 32, 48]
  assert buckets.fit(33, (32, 64, 128)) == 64


def test_ladders_unchanged():
  for limit in (1, 2, 7, 16, 24, 31, 32, 33, 96, 100, 128, 200, 512, 1000, 2048, 4096):
    for minimum in (1, 3, 8, 16, 24, 32, 48, 100, 256):
      assert sft.default_buckets(limit, minimum) == _old_default_buckets(limit, minimum)
      assert buckets.ladder(limit, minimum) == tuple(_old_dpo_buckets(limit, minimum))
    assert buckets.ladder(limit, 0) == tuple(_old_dpo_buckets(limit, 0))
    assert sft.default_buckets(limit) == _old_default_buckets(limit)


def test_sampling_bucket_unchanged():
  assert sampling.bucket is buckets.bucket
  for n in range(0, 600):
    for minimum in (1, 8, 16, 10):
      for half in (True, False):
        assert buckets.bucket(n, minimum, half_steps=half) == _old_sampling_bucket(n, minimum, half_steps=half)
