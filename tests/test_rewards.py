from __future__ import annotations

import pytest

from engage_jax import rewards
from engage_jax.data import Dialogue, Turn, outcome_line


@pytest.mark.parametrize("text", [
    "Thank you, I feel much better now.", "that really helps", "You've been a great help!",
    "I FEEL BETTER", "you have been such a great help"])
def test_es_engaged_positive(text):
  assert rewards.es_engaged(["hello", text])


@pytest.mark.parametrize("text", ["i still feel bad", "it might help to walk", "bye", ""])
def test_es_engaged_negative(text):
  assert not rewards.es_engaged([text])


def test_es_engaged_last_n():
  texts = ["i feel much better", "hmm", "bye"]
  assert not rewards.es_engaged(texts, last_n=2)
  assert rewards.es_engaged(texts, last_n=3)
  assert rewards.es_engaged(["bye", "i feel better"], pattern=r"xyz|better", last_n=1)
  with pytest.raises(ValueError):
    rewards.es_engaged(texts, last_n=0)


@pytest.mark.parametrize("text,value", [
    ("I will donate $0.50.", 0.5), ("ok, $1", 1.0), ("0.5 dollars", 0.5), ("50 cents", 0.5),
    ("one dollar", 1.0), ("two dollars please", 2.0), ("half a dollar", 0.5),
    ("I'll give 25 cents", 0.25), ("nothing", 0.0), ("I won't donate.", 0.0),
    ("I will donate $10.", 2.0), ("$.75", 0.75), ("no donation from me", 0.0)])
def test_parse_donation(text, value):
  assert rewards.parse_donation(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["hello there", "", "maybe later"])
def test_parse_donation_none(text):
  assert rewards.parse_donation(text) is None


@pytest.mark.parametrize("d", [0.0, 0.25, 0.5, 1.0, 2.0, 1.37])
def test_outcome_line_round_trip(d):
  assert rewards.parse_donation(outcome_line(d)) == pytest.approx(d)


def test_reward_helper():
  es = Dialogue("a", "es", [Turn("user", "hi"), Turn("agent", "ok"),
                            Turn("user", "that really helps [END]")], {})
  assert rewards.reward("es", es) == 1.0
  assert rewards.reward("es", ["hi", "bye"]) == 0.0
  assert rewards.reward("es", ["yay", "bye"], {"es_pattern": "yay", "es_last_n": 2}) == 1.0
  p = Dialogue("b", "p4g", [Turn("agent", "donate?"), Turn("user", "ok")], {},
               {"outcome_text": "I will donate $0.25."})
  assert rewards.reward("p4g", p) == 0.25
  assert rewards.reward("p4g", ["sure", "I will donate $5"], {"donation_cap": 3.0}) == 3.0
  assert rewards.reward("p4g", ["hmm"]) == 0.0
  with pytest.raises(ValueError, match="task"):
    rewards.reward("xx", [])
