"""The delayed-effect sandbox worlds (world="delayed", issue 28): closed form against Monte-Carlo
samples of the generator, the optima by enumeration, the immediate reward the search's turn reward
actually gives, and the default worlds left as they were."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest

from engage_jax import config_check, rewards
from engage_jax.data import sandbox
from engage_jax.data.dialogue import AGENT, USER, Turn
from engage_jax.errors import InputError
from engage_jax.search.base import Expansion
from engage_jax.search.env import turn_reward

A, R, RE, S = sandbox.ES_STRATEGIES   # Reassurance, Reflection, Restatement, Suggestions
LOG, EMO, CRED, STORY = sandbox.P4G_STRATEGIES
REPO = Path(__file__).resolve().parents[2]


def _agents(d):
  return [t.strategy for t in d.turns if t.role == AGENT and t.strategy != sandbox.GREETING_STRATEGY]


def _within(samples, want, sd_per_sample, k=4.0):
  n = len(samples)
  return n > 0 and abs(sum(samples) / n - want) < k * sd_per_sample / math.sqrt(n)


def test_es_delayed_closed_form_matches_samples():
  ds = sandbox.generate("es", 6000, 0, world="delayed")
  by_p: dict[float, list[float]] = {}
  for d in ds:
    played = _agents(d)
    assert len(played) == sandbox.DELAYED_TURNS and d.turns[0].role == USER
    users = [t.text for t in d.turns if t.role == USER][1:]   # the replies to the agent turns
    for s, reply in zip(played[:-1], users[:-1]):               # warm line iff Reassurance, before the end
      assert (reply in sandbox.ES_WARM) == (s == A)
      assert rewards.es_engaged([reply], last_n=1) == (s == A)  # the warm line reads as engagement
    assert d.outcome["engaged"] == (users[-1] in sandbox.ES_DELAYED_BETTER)
    assert d.outcome["engaged"] == rewards.es_engaged(users, last_n=1)   # the final reply decides
    p = sandbox.expected_reward("es", d.condition, played, "delayed")
    by_p.setdefault(p, []).append(float(d.outcome["engaged"]))
  assert sorted(by_p) == [0.1, 0.25, 0.8, 0.9]
  for p, xs in by_p.items():
    assert _within(xs, p, math.sqrt(p * (1 - p))), (p, sum(xs) / len(xs), len(xs))
  all_x = [x for xs in by_p.values() for x in xs]
  u = sandbox.world_table("es")["uniform"]
  assert _within(all_x, u, math.sqrt(u * (1 - u)))


def test_p4g_delayed_closed_form_matches_samples():
  ds = sandbox.generate("p4g", 6000, 1, world="delayed")
  by_level: dict[int, list[float]] = {k: [] for k in range(4)}
  for d in ds:
    played = _agents(d)
    assert len(played) == sandbox.DELAYED_TURNS
    level = sandbox.p4g_delayed_level(played)
    assert d.outcome["level"] == level
    replies = [t.text for t in d.turns if t.role == USER][1:]
    for s, reply in zip(played, replies):
      pledged = rewards.parse_donation(reply, 2.0, outcome_line=False)
      assert (pledged is not None and pledged >= 1.0) == (s == EMO)   # only pressure draws a pledge
    by_level[level].append(d.outcome["donation"])
  for k, xs in by_level.items():
    assert _within(xs, sandbox.donation_mean(k), 0.9), (k, len(xs))
  all_x = [x for xs in by_level.values() for x in xs]
  assert _within(all_x, sandbox.world_table("p4g")["uniform"], 0.9)


def test_expected_reward_by_hand():
  es = {"emotion_type": "anger"}
  want = {(R, R, S): 0.9, (R, S, RE): 0.8, (RE, R, S): 0.8, (S, R, S): 0.1, (R, R, R): 0.25,
          (A, R, S): 0.1, (R, R, A): 0.1, (RE, RE, "<unmatched>"): 0.25}
  for seq, p in want.items():
    assert sandbox.expected_reward("es", es, seq, "delayed") == pytest.approx(p), seq
  p4g = {"motivation": "numbers"}
  want = {(CRED, LOG, STORY): 1.5625, (LOG, CRED, STORY): 1.025, (CRED, LOG, EMO): 0.325,
          (LOG, LOG, LOG): 0.55, (STORY, CRED, LOG): 1.5625}
  for seq, d in want.items():
    assert sandbox.expected_reward("p4g", p4g, ["Greeting", *seq], "delayed") == pytest.approx(d), seq
  assert sandbox.optimal_strategy("es", es, "delayed") == R
  assert sandbox.optimal_strategy("es", es) == "Reflection of feelings"   # default: by emotion
  assert sandbox.optimal_strategy("p4g", p4g, "delayed") == CRED


def test_optima_greedy_and_turn_reward():
  es = sandbox.world_table("es")
  assert es["optimum"] == pytest.approx(0.9) and es["optimal_plans"] == [[R, R, S]]
  assert es["greedy_plan"][0] == A and es["greedy"] == pytest.approx(0.1)
  assert es["margin"] == pytest.approx(0.8) and es["uniform"] < 0.25
  p4g = sandbox.world_table("p4g")
  assert p4g["optimum"] == pytest.approx(1.5625) and [CRED, LOG, STORY] in p4g["optimal_plans"]
  assert p4g["greedy_plan"][:2] == [EMO, EMO] and p4g["greedy"] == pytest.approx(0.325)
  assert p4g["margin"] == pytest.approx(1.2375)
  # immediate_reward is what the search's turn reward gives the world's reply lines
  for task, s, pool in (("es", A, sandbox.ES_WARM), ("es", R, sandbox.ES_CONTINUE),
                        ("p4g", EMO, sandbox.P4G_PLEDGE), ("p4g", CRED, sandbox.P4G_LUKEWARM)):
    got = [turn_reward(task, Expansion(Turn(AGENT, "x"), Turn(USER, line.format(adj="sad")))) for line in pool]
    assert sum(got) / len(got) == pytest.approx(sandbox.immediate_reward(task, [s])), (task, s)
  # the default worlds: greedy = optimum (no delayed effect)
  assert sandbox.world_table("es", "default")["margin"] == 0.0


def test_default_world_unchanged_and_world_checked():
  h = hashlib.sha256()
  for task in ("es", "p4g"):
    for d in sandbox.generate(task, 200, 0):
      h.update(json.dumps(d.to_json(), sort_keys=True).encode())
  assert h.hexdigest()[:16] == "7f8991230cac68a5"   # the output of the code before issue 28
  assert not set(sandbox.ES_WARM + sandbox.P4G_PLEDGE) & set(sandbox.all_texts())
  with pytest.raises(ValueError, match="sandbox world"):
    sandbox.generate("es", 1, 0, world="later")
  for task in ("es", "p4g"):
    path = REPO / "configs" / "experiments" / f"sandbox_delayed_{task}.py"
    spec = importlib.util.spec_from_file_location(f"cfg_delayed_{task}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    assert cfg.task == task and cfg.data.sandbox_world == "delayed"
    config_check.check(cfg)
    cfg.data.sandbox_world = "later"
    with pytest.raises(InputError, match="sandbox_world"):
      config_check.check(cfg)
