"""Statistics and the evaluation driver (with a fake `simulate`; no model)."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from engage_jax import evaluate as ev
from engage_jax.data.dialogue import Dialogue, Turn

# Tolerances: exact permutation / McNemar p-values of small integer data are fractions k/2^n,
# computed in float64 (pytest.approx's relative 1e-6); a seeded large-sample p-value is only bounded
# by 1e-3. Independent of the CPU.


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_coverage_normal_and_bernoulli():
  rng = np.random.default_rng(123)
  for draw, mean in ((lambda n: rng.normal(1.0, 2.0, n), 1.0), (lambda n: rng.binomial(1, 0.3, n), 0.3)):
    hits = 0
    reps = 120
    for r in range(reps):
      lo, hi = ev.bootstrap_ci(draw(60), n_boot=1000, seed=r)
      assert lo <= hi
      hits += lo <= mean <= hi
    # nominal 95%; the percentile bootstrap under-covers a little at n=60
    assert 0.85 <= hits / reps <= 1.0, hits / reps


def test_bootstrap_ci_deterministic_and_degenerate():
  x = [0.0, 1.0, 1.0, 0.0, 1.0]
  assert ev.bootstrap_ci(x, seed=3) == ev.bootstrap_ci(x, seed=3)
  assert ev.bootstrap_ci([2.5]) == (2.5, 2.5)
  assert ev.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
  lo, hi = ev.bootstrap_ci(x, level=0.5)
  lo95, hi95 = ev.bootstrap_ci(x, level=0.95)
  assert lo95 <= lo <= hi <= hi95


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")]])
def test_bootstrap_ci_bad_input(bad):
  with pytest.raises(ValueError):
    ev.bootstrap_ci(bad)


# ----------------------------------------------------------------------------- paired test
def test_paired_test_exact_hand_case():
  # d = [1, 2, 3]: 8 sign patterns; sums 6, 4, 2, 0, 0, -2, -4, -6.
  a, b = [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]
  assert ev.paired_test(a, b, alternative="greater") == pytest.approx(1 / 8)   # only +6
  assert ev.paired_test(a, b) == pytest.approx(2 / 8)                          # |±6|
  assert ev.paired_test(a, b, alternative="less") == pytest.approx(1.0)
  # d = [1, -1, 2]: sums 2, 0, 4, 2, -2, -4, 0, -2 → P(T >= 2) = 3/8, P(|T| >= 2) = 6/8
  assert ev.paired_test([0, 0, 0], [1, -1, 2], alternative="greater") == pytest.approx(3 / 8)
  assert ev.paired_test([0, 0, 0], [1, -1, 2]) == pytest.approx(6 / 8)
  assert ev.paired_test([1, 2], [1, 2]) == 1.0


def test_paired_test_shift_and_null():
  rng = np.random.default_rng(0)
  a = rng.normal(size=80)
  assert ev.paired_test(a, a + 0.5 + 0.3 * rng.normal(size=80)) < 1e-3
  assert ev.paired_test(a, a + 0.5 + 0.3 * rng.normal(size=80), alternative="greater") < 1e-3
  ps = [ev.paired_test(x := rng.normal(size=30), x + rng.normal(size=30), seed=i, n_permutations=2000)
        for i in range(40)]
  assert 0.2 < np.mean(ps) < 0.8                   # p is ~uniform under H0
  assert np.mean(np.array(ps) < 0.05) < 0.2
  # random-flip p has the +1 correction: never 0
  assert ev.paired_test(np.zeros(40), np.ones(40)) == pytest.approx(1 / (1 + ev.DEFAULT_PERMUTATIONS))


def test_paired_test_errors():
  with pytest.raises(ValueError, match="same length"):
    ev.paired_test([1, 2], [1])
  with pytest.raises(ValueError, match="alternative"):
    ev.paired_test([1], [2], alternative="bigger")


def test_mcnemar_exact():
  # 7 discordant pairs all favour b: one-sided p = 1/128, two-sided 2/128
  a, b = [0] * 7 + [1, 0], [1] * 7 + [1, 0]
  assert ev.mcnemar_exact(a, b, alternative="greater") == pytest.approx(1 / 128)
  assert ev.mcnemar_exact(a, b) == pytest.approx(2 / 128)
  assert ev.mcnemar_exact([1, 0], [1, 0]) == 1.0
  with pytest.raises(ValueError, match="binary"):
    ev.mcnemar_exact([0.5], [1])


# ----------------------------------------------------------------------------- driver
def _conditions(n, task="es"):
  return [Dialogue(id=f"c{i}", task=task, turns=[Turn("user", f"hello {i}")], condition={"emotion_type": "x"})
          for i in range(n)]


class FakeSimulate:
  """reward depends on (condition, seed, agent): deterministic, so SFT/DPO pairing can be checked."""

  def __init__(self):
    self.calls = []

  def __call__(self, agent, simulator, starts, *, task, max_agent_turns, reward_cfg, seed):
    self.calls.append(dict(n=len(starts), task=task, max_agent_turns=max_agent_turns, seed=seed,
                           ids=[s.id for s in starts], reward_cfg=reward_cfg))
    out = []
    for s in starts:
      rng = np.random.default_rng([zlib.crc32(s.id.encode()), seed])
      r = float(rng.random() < (0.8 if agent == "dpo" else 0.5))
      turns = s.turns + [Turn("agent", "hi"), Turn("user", "ok")]
      out.append(Dialogue(id="changed-by-simulate", task=task, turns=turns, condition=s.condition,
                          outcome={"reward": r, "num_turns": int(rng.integers(1, max_agent_turns + 1)),
                                   "terminal": True}))
    return out


def _cfg(**eval_overrides):
  from ml_collections import ConfigDict
  e = dict(n_conditions=10, samples_per_condition=3, max_agent_turns=4)
  e.update(eval_overrides)
  return ConfigDict(dict(task="es", eval=e, reward=dict(es_last_n=2)))


def test_evaluate_driver_pairs_conditions_and_seeds(tmp_path):
  fake = FakeSimulate()
  conds = _conditions(10)
  out = tmp_path / "eval" / "dialogues.jsonl"
  summary, ds = ev.evaluate("sft", "sim", conds, _cfg(), seed=7, out_path=str(out), simulate_fn=fake)
  assert len(ds) == 30 and summary["n"] == 30
  assert set(summary) == {"n", "reward_mean", "ci95", "mean_turns"}
  assert summary["ci95"][0] <= summary["reward_mean"] <= summary["ci95"][1]
  assert [c["n"] for c in fake.calls] == [10, 10, 10]
  assert len({c["seed"] for c in fake.calls}) == 3
  assert fake.calls[0]["max_agent_turns"] == 4 and fake.calls[0]["reward_cfg"].es_last_n == 2
  assert ds[0].id == "c0/s0" and ds[10].id == "c0/s1"
  assert ds[0].outcome["condition_id"] == "c0" and ds[10].outcome["sample"] == 1
  # written atomically, one JSON line per dialogue, readable back
  lines = out.read_text().splitlines()
  assert len(lines) == 30 and json.loads(lines[0])["id"] == "c0/s0"
  assert [d.id for d in ev.load_dialogues(str(out))] == [d.id for d in ds]

  # DPO with the same cfg and seed sees the same starts and seeds
  fake2 = FakeSimulate()
  _, ds2 = ev.evaluate("dpo", "sim", conds, _cfg(), seed=7, simulate_fn=fake2)
  assert [(c["ids"], c["seed"]) for c in fake.calls] == [(c["ids"], c["seed"]) for c in fake2.calls]
  a, b, ids = ev.paired_rewards(ds, ds2)
  assert ids == [f"c{i}" for i in range(10)] and a.shape == b.shape == (10,)


def test_evaluate_batches_and_monkeypatched_rollout(monkeypatch):
  fake = FakeSimulate()
  monkeypatch.setattr(ev, "_default_simulate", lambda: fake)
  summary, ds = ev.evaluate("sft", "sim", _conditions(5), _cfg(samples_per_condition=2, batch_size=2), seed=0)
  assert [c["n"] for c in fake.calls] == [2, 2, 1, 2, 2, 1]
  assert len({c["seed"] for c in fake.calls}) == 6 and summary["n"] == 10


def test_evaluate_errors():
  fake = FakeSimulate()
  with pytest.raises(ValueError, match="no held-out"):
    ev.evaluate("a", "s", [], _cfg(), seed=0, simulate_fn=fake)
  with pytest.raises(ValueError, match="duplicate"):
    ev.evaluate("a", "s", _conditions(2) + _conditions(1), _cfg(), seed=0, simulate_fn=fake)
  with pytest.raises(ValueError, match="task"):
    ev.evaluate("a", "s", _conditions(2, task="p4g"), _cfg(), seed=0, simulate_fn=fake)
  with pytest.raises(ValueError, match="reward"):
    ev.summarize([Dialogue("x", "es", [], {}, {})])
