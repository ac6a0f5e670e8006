"""The human block's statistics against scipy and hand computations, and its place in the report."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps

from engage_jax import evaluate as ev
from engage_jax import report as run_report
from engage_jax.human_eval import items as items_mod, report as human_report, stats

from .conftest import make_workdir, sim_dialogues

# Tolerances: float64 Python/numpy statistics on small integer data against scipy or exact
# enumeration (2^8 sign flips): equal to 1e-12 / rel 1e-9 / pytest.approx's default relative 1e-6;
# nothing here is fp32 or vectorised differently between AVX2 and AVX-512.


@pytest.mark.parametrize("seed", range(4))
def test_rankdata_and_spearman_match_scipy(seed):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, 6, size=30).astype(float)          # Likert: many ties
  y = rng.random(30).round(1)
  np.testing.assert_allclose(stats.rankdata(x), sps.rankdata(x))
  assert stats.spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
  assert stats.spearman(x, -x) == pytest.approx(-1.0)
  assert stats.spearman([1, 2, 3], [5, 5, 5]) is None and stats.spearman([1, 2], [1, 2]) is None


@pytest.mark.parametrize("k,n", [(0, 5), (3, 10), (5, 10), (9, 12), (20, 20), (7, 31)])
def test_binomial_sign_test_matches_scipy(k, n):
  assert stats.binom_two_sided(k, n) == pytest.approx(sps.binomtest(k, n, 0.5).pvalue, rel=1e-9)


def _session(i, sft, dpo, preferred, condition=None, rated=True, turns=4):
  return {"id": i, "rater_id": i // 2, "condition_id": condition or f"eval-{i % 4}", "rated": rated,
          "ratings": {"sft": sft, "dpo": dpo} if rated else {"sft": {}, "dpo": {}},
          "turns": {"sft": turns, "dpo": turns}, "preferred": preferred if rated else None}


def test_human_block_against_hand_computation():
  items = items_mod.items("es")
  fb_sft = [2, 3, 3, 4, 1, 2, 5, 3]
  fb_dpo = [4, 3, 5, 4, 3, 2, 5, 4]
  sessions = []
  for i, (a, b) in enumerate(zip(fb_sft, fb_dpo)):
    sessions.append(_session(i, {"feeling_better": a, "empathy": 3, "naturalness": a},
                             {"feeling_better": b, "empathy": 3, "naturalness": 6 - b}, "dpo" if i < 6 else "sft"))
  sessions.append(_session(8, {}, {}, None, rated=False, turns=3))   # started, never rated → excluded
  sessions.append(_session(9, {}, {}, None, rated=False, turns=0))   # never started
  sim = stats.sim_engagement({"sft": sim_dialogues("es", "sft"), "dpo": sim_dialogues("es", "dpo")})
  block = stats.human_block(sessions, items, sim=sim, latencies_ms=[10, 20, 30, 40], seed=0, n_boot=2000)
  assert block["n_sessions"] == 8 and block["n_raters"] == 4 and block["n_conditions"] == 4
  assert block["excluded"]["count"] == 1 and block["not_started"] == 1
  fb = block["items"]["feeling_better"]
  a, b = np.array(fb_sft, float), np.array(fb_dpo, float)
  assert fb["sft"]["mean"] == pytest.approx(a.mean()) and fb["dpo"]["mean"] == pytest.approx(b.mean())
  assert fb["sft"]["ci95"] == list(ev.bootstrap_ci(a, n_boot=2000, seed=0))
  assert fb["diff_mean"] == pytest.approx((b - a).mean())
  # exact sign-flip p by hand: all 2^8 sign patterns of d, |mean| >= observed
  d = b - a
  hits = sum(abs(np.dot(s, d)) >= abs(d.sum()) - 1e-9 for s in itertools.product((1, -1), repeat=8))
  assert fb["p_value"] == pytest.approx(hits / 256)
  scipy_p = sps.permutation_test((a, b), lambda x, y: np.mean(y - x), permutation_type="samples",
                                 n_resamples=10_000).pvalue
  assert fb["p_value"] == pytest.approx(scipy_p)
  assert block["items"]["empathy"]["p_value"] == 1.0                 # no differences at all
  pref = block["preference"]
  assert (pref["n"], pref["dpo"], pref["sft"], pref["dpo_rate"]) == (8, 6, 2, 0.75)
  assert pref["p_value"] == pytest.approx(sps.binomtest(6, 8).pvalue)
  assert block["reply_latency_ms"] == {"n": 4, "p50": 25.0, "p95": pytest.approx(38.5)}
  # Spearman pairs (session, model) with the same model's simulated reward on the same condition
  xs, ys = [], []
  for s in sessions[:8]:
    for m in ("sft", "dpo"):
      xs.append(s["ratings"][m]["naturalness"])
      ys.append(sim[m][s["condition_id"]])
  sp = block["spearman"]["naturalness"]
  assert sp["n"] == 16 and sp["rho"] == pytest.approx(sps.spearmanr(xs, ys).statistic)


def test_report_gets_the_block_once_and_stays_valid(tmp_path):
  wd = make_workdir(tmp_path / "wd")
  before = json.loads((wd / "report.json").read_text())
  items = items_mod.items("es")
  sessions = [_session(i, {k.key: 3 for k in items}, {k.key: 4 for k in items}, "dpo") for i in range(3)]
  block = stats.human_block(sessions, items, n_boot=200)
  for _ in range(2):                                                 # rewritten, not appended
    written = human_report.write(wd, block)
  rep = run_report.load_report(str(wd / "report.json"))               # the public schema still holds
  assert rep["extra"]["human"]["n_sessions"] == 3
  assert {k: v for k, v in rep.items() if k != "extra"} == {k: v for k, v in before.items() if k != "extra"}
  md = (wd / "report.md").read_text()
  assert md.count(human_report.BEGIN) == 1 and "Human evaluation" in md and "| SFT |" in md
  assert json.loads((wd / "human_eval" / "summary.json").read_text())["n_sessions"] == 3
  assert set(written) == {"summary.json", "report.json", "report.md"}
