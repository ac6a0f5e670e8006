from __future__ import annotations

import pytest

from engage_jax import rewards
from engage_jax.data import Dialogue, Turn, outcome_line

# Tolerances: rewards are parsed from text into Python floats (exact decimal amounts, means of a few
# of them): compared to 1e-9 or pytest.approx's default relative 1e-6, independent of the CPU.


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


# (text, expected dollars or None). Expectations are read off the words, not off what the
# persuadee later gave (B6): the reward is what the simulator *says*. All in outcome-line mode.
PHRASINGS = [
    # the cases
    ("I won't donate even $1.", 0.0),        # refusal governs the amount
    ("I will not donate 50 cents", 0.0),
    ("1 dollar and 50 cents", 1.5),
    ("$1,000", 2.0),                         # thousands separator, then the cap
    ("I donate 0", 0.0),                     # bare number after a donation verb
    ("I can't do a dollar, but 30 cents is fine", 0.3),  # committed beats refused
    # compound amounts
    ("a dollar fifty", 1.5),
    ("$1.50", 1.5),
    ("one dollar and fifty cents", 1.5),
    ("a dollar and a half", 1.5),
    ("I'll donate 1.5 dollars", 1.5),
    ("I will give 2 dollars", 2.0),
    ("2 bucks", 2.0),
    ("twenty-five cents", 0.25),
    ("twenty five cents", 0.25),
    ("50c", 0.5),
    ("$.75", 0.75),
    ("half a dollar", 0.5),
    ("I will donate $10.", 2.0),             # cap
    # coin words
    ("a quarter", 0.25),
    ("I'll give a dime.", 0.1),
    ("Just a penny.", 0.01),
    ("a nickel", 0.05),
    ("two quarters", 0.5),
    # zero
    ("nothing", 0.0),
    ("Not a cent.", 0.0),
    ("Not even a penny.", 0.0),
    ("I'd rather not give anything.", 0.0),
    ("No donation from me", 0.0),
    ("I don't want to donate.", 0.0),
    ("I am not going to donate anything today.", 0.0),
    # idioms that are not refusals
    ("I don't mind giving $1.", 1.0),
    ("No problem, I'll donate 75 cents.", 0.75),
    # committed vs mentioned
    ("I'll donate $1 of my $2 bonus.", 1.0),
    ("$30 a month feeds a child, so I'll give $0.40", 0.4),
    # ambiguous: None, never a guess
    ("I can't do a dollar.", None),          # refuses one amount, names none
    ("I'll give $1 or $2.", None),           # two committed amounts
    ("I could give up to $1.", None),        # hedged
    ("Would 50 cents help?", None),          # a question only mentions
    ("I'll donate $1. Actually no, I won't donate.", None),  # commitment and refusal
    ("I'd like to donate 10% of my bonus", None),
    ("Maybe later.", None),
    ("hello there", None),
    ("", None),
    # canonical outcome lines
    ("I will donate $0.50.", 0.5),
    ("I will donate $0.00.", 0.0),
    ("I will donate $2.00.", 2.0),
]

# Real persuadee turns of PersuasionForGood (full_dialog.csv, B4 == 1), verbatim.
CORPUS_PHRASINGS = [
    ("I would like to donate $0.20.", 0.2),
    ("I will donate .50.", 0.5),
    ("Cool. I will give $1!", 1.0),
    ("I would like to donate ten cents.", 0.1),
    ("I choose to donate 40 cents from the total.", 0.4),
    ("oh! Ok, well then I can certainly donate the 30 cents  as well. Good way to end my night.", 0.3),
    ("I agree on one dollar.", 1.0),
    ("just i am donate $100 dollar only.", 2.0),
    ("as per today's earning is very little I would like to donate 1", 1.0),
    ("Again, I don't know how else I can say this. I will donate nothing to this. I prefer to do "
     "this locally", 0.0),
    ("I donate to the charity twice a year already and today I would like to keep my full bonus.", 0.0),
    ("I understand this and have supported Unbound a similar charity for years.  Since I already "
     "donate to a charity like this I am not making a donation. ", 0.0),
    ("I suppose not. I mean, a penny is nothing in the grand scheme of things. If I have a chance to "
     "donate when I'm a bit more financially stable, I will donate more. Right now, I think I can "
     "spare a penny. :)", 0.01),
    ("I'm not sure yet. Would 50 cents be able to help a family really? ", None),
    ("I am sure too, a little help can really make a big difference. It is surprising that even "
     "$30.00 per month can support a whole family", None),
    ("That's fair, well, I guess that it wouldn't hurt to give some money to your charity. How do I "
     "go about doing that?", None),
    ("I can do 0.30 cents at the moment. ", None),   # 30 cents or 0.3 cent: reads two ways
    ("In my opinion, every dollar counts. Unless I get to see with my own eyes what the charity is "
     "doing, then I don't know if they are legitimate or not", None),
]


def _check(text, value, **kw):
  got = rewards.parse_donation(text, **kw)
  if value is None:
    assert got is None, (text, got)
  else:
    assert got == pytest.approx(value, abs=1e-9), (text, got)


@pytest.mark.parametrize("text,value", PHRASINGS + CORPUS_PHRASINGS)
def test_parse_donation(text, value):
  _check(text, value)


@pytest.mark.data
def test_corpus_phrasings_are_verbatim(data_dir):
  import csv
  with open(data_dir / "p4g" / "full_dialog.csv", encoding="utf-8", newline="") as f:
    persuadee = {r["Unit"] for r in csv.DictReader(f) if r["B4"] == "1"}
  assert [t for t, _ in CORPUS_PHRASINGS if t not in persuadee] == []


@pytest.mark.parametrize("text,outcome,free", [
    ("I donate 0", 0.0, None), ("I will donate .50.", 0.5, None), ("nothing", 0.0, None),
    ("0.5", 0.5, None), ("I have 2 kids", None, None), ("I will donate $1", 1.0, 1.0)])
def test_bare_numbers_only_in_outcome_line(text, outcome, free):
  _check(text, outcome, outcome_line=True)
  _check(text, free, outcome_line=False)


def test_outcome_line_round_trip_every_cent():
  bad = [(c, rewards.parse_donation(outcome_line(c / 100))) for c in range(201)
         if rewards.parse_donation(outcome_line(c / 100)) != round(c / 100, 2)]
  assert bad == []


def test_cap_is_applied():
  assert rewards.parse_donation("I will donate $1.50", cap=1.0) == 1.0
  assert rewards.parse_donation("$1,000", cap=5.0) == 5.0


def _user_texts(d: Dialogue) -> list[str]:
  return [t.text for t in d.turns if t.role == "user"]


def test_reward_helper():
  es = Dialogue("a", "es", [Turn("user", "hi"), Turn("agent", "ok"),
                            Turn("user", "that really helps [END]")], {})
  assert rewards.reward("es", _user_texts(es)) == 1.0
  assert rewards.reward("es", ["hi", "bye"]) == 0.0
  assert rewards.reward("es", ["yay", "bye"], {"es_pattern": "yay", "es_last_n": 2}) == 1.0
  p = Dialogue("b", "p4g", [Turn("agent", "donate?"), Turn("user", "ok")], {},
               {"outcome_text": "I will donate $0.25."})
  assert rewards.reward("p4g", _user_texts(p), outcome=p.outcome) == 0.25
  assert rewards.reward("p4g", ["sure", "I will donate $5"], {"donation_cap": 3.0}) == 3.0
  assert rewards.reward("p4g", ["hmm"]) is None   # unparsed, not $0
  assert rewards.reward("p4g", ["I donate 0"]) is None  # free text: no bare numbers
  unparsed = Dialogue("c", "p4g", [Turn("user", "ok")], {}, {"outcome_text": "hmm", "donation": None})
  assert rewards.reward("p4g", _user_texts(unparsed), outcome=unparsed.outcome) is None
  with pytest.raises(ValueError, match="task"):
    rewards.reward("xx", [])
