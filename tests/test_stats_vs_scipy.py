"""The evaluation statistics against scipy: bootstrap interval, paired permutation p, exact McNemar.

Binary samples of n = 12, 40 and 200 (the reward of an ES run; a P4G run's rewards are continuous,
covered by the normal samples).
"""
from __future__ import annotations

import numpy as np
import pytest

from engage_jax import evaluate as ev

# Tolerances: float64 statistics in numpy/Python against scipy. Exact p-values agree to rel 1e-9
# (summation order only); bootstrap / Monte-Carlo quantities are compared within a fraction of
# their own standard error (seeded numpy RNG, which draws the same numbers on every CPU).

stats = pytest.importorskip("scipy.stats")
N_BOOT = 20_000


def _paired_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  a = rng.binomial(1, 0.45, n).astype(float)
  b = np.where(rng.random(n) < 0.3, 1.0 - a, a)   # ~30% discordant pairs
  b[: n // 6] = 1.0                               # some shift towards b
  return a, b


def _scipy_ci(x: np.ndarray) -> tuple[float, float]:
  res = stats.bootstrap((x,), np.mean, n_resamples=N_BOOT, method="percentile", confidence_level=0.95,
                        rng=np.random.default_rng(123), vectorized=True)
  return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.mark.parametrize("n", [12, 40, 200])
def test_bootstrap_ci_matches_scipy_normal(n):
  """Continuous values: both intervals are Monte Carlo estimates of the same quantiles; they must
  agree to 0.1 standard errors (their own MC error is ~0.03 SE; a 90% interval is ~0.3 SE off)."""
  x = np.random.default_rng(n).normal(0.5, 1.0, n)
  se = x.std(ddof=1) / np.sqrt(n)
  ours, ref = ev.bootstrap_ci(x, n_boot=N_BOOT, seed=1), _scipy_ci(x)
  assert np.allclose(ours, ref, atol=0.1 * se), (ours, ref, se)


@pytest.mark.parametrize("n", [12, 40, 200])
def test_bootstrap_ci_matches_scipy_binary(n):
  """Binary values: resampled means lie on a 1/n grid, so percentiles may differ by one step."""
  x, _ = _paired_binary(n, seed=n)
  se = x.std(ddof=1) / np.sqrt(n)
  ours, ref = ev.bootstrap_ci(x, n_boot=N_BOOT, seed=1), _scipy_ci(x)
  assert np.allclose(ours, ref, atol=1.0 / n + 0.1 * se), (ours, ref)


def _scipy_paired_p(a, b, alternative, n_resamples):
  res = stats.permutation_test((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), vectorized=True,
                               permutation_type="samples", alternative=alternative,
                               n_resamples=n_resamples, rng=np.random.default_rng(7))
  return float(res.pvalue)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_test_exact_matches_scipy(alternative):
  """n = 12: both enumerate all 2^12 within-pair swaps, so the p-values are equal."""
  a, b = _paired_binary(12, seed=5)
  assert np.any(a != b)
  ref = _scipy_paired_p(a, b, alternative, np.inf)
  assert ev.paired_test(a, b, alternative=alternative) == pytest.approx(ref, rel=1e-9, abs=1e-12)
  x = np.random.default_rng(2).normal(0, 1, 12)   # continuous differences too
  y = x + np.random.default_rng(3).normal(0.4, 1, 12)
  ref = _scipy_paired_p(x, y, alternative, np.inf)
  assert ev.paired_test(x, y, alternative=alternative) == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n", [40, 200])
@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
def test_paired_test_sampled_matches_scipy(n, alternative):
  """Random sign patterns (20,000 each): p agrees within 0.02 (MC sd of each <= 0.0036)."""
  a, b = _paired_binary(n, seed=n + 1)
  ref = _scipy_paired_p(a, b, alternative, 20_000)
  assert ev.paired_test(a, b, alternative=alternative, seed=3) == pytest.approx(ref, abs=0.02)


@pytest.mark.parametrize("n", [12, 40, 200])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mcnemar_matches_binomtest(n, alternative):
  a, b = _paired_binary(n, seed=n + 2)
  n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
  ref = stats.binomtest(n01, n01 + n10, 0.5, alternative=alternative).pvalue
  assert ev.mcnemar_exact(a, b, alternative=alternative) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mcnemar_matches_binomtest_every_small_table(alternative):
  for n01 in range(9):
    for n10 in range(9):
      if n01 + n10 == 0:
        continue
      a = np.array([0.0] * n01 + [1.0] * n10 + [1.0, 0.0])
      b = np.array([1.0] * n01 + [0.0] * n10 + [1.0, 0.0])
      ref = stats.binomtest(n01, n01 + n10, 0.5, alternative=alternative).pvalue
      assert ev.mcnemar_exact(a, b, alternative=alternative) == pytest.approx(ref, rel=1e-9), (n01, n10)
