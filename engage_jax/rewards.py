"""Engagement rewards: ES "feels better" regex and P4G donation parsing.

- ES: binary. `es_engaged` searches the seeker's last `last_n` turns (case-insensitive) for an
  expression of feeling better / being helped (docs/CONTRACTS.md).
- P4G: the donation in dollars the persuadee states, parsed by `parse_donation`, clipped to
  [0, cap] (cap 2.0 by default, the task's maximum). Unparsed texts give None, never a guess.

The donation grammar (`parse_donation`). The text is lower-cased and split into sentences
(at . ! ? followed by a space) and clauses (at ", " ; "but" "however" "though"). Then:

  AMOUNT   "$1.50" "$.30" "50$" "$1,000" "1.5 dollars" "2 bucks" "1 dollar and 50 cents"
           "50 cents" "50c" "a dollar fifty" "one dollar and fifty cents" "a dollar and a half"
           "twenty-five cents" "half a dollar" "a quarter" "two dimes" "a nickel" "a penny";
           number words up to "nine hundred ninety nine"; "," thousands separators.
           A decimal before "cents" ("0.30 cents": 30 cents or 0.3 cent?) is ambiguous.
  BARE     a number after a donation verb ("I donate 0", "I'd like to donate .50"), or a
           whole text that is a number: only when `outcome_line` (the answer to the outcome
           request); never "10%".
  MENTION  an amount that is not the persuadee's donation: in a question sentence, after
           "of / out of / from / than" (not "all of"), before "per month / a year / monthly".
  REFUSED  an amount after a negation in its clause ("not", "n't", "never", "cannot"; idioms
           such as "don't mind", "no problem", "not hesitate" are not negations).
  HEDGED   an amount after "more than / less than / at most / at least / up to / over / under".
  ZERO     "donate nothing", "not a cent" / "not even a penny", "not give anything",
           "rather not give", "no donation", "not making a donation", "decline", "keep my full
           bonus", a negated donation verb ("won't donate") in a clause without an amount;
           and, in an outcome line only, a bare "nothing" / "none" / "zero" / "no".

  value = the committed amount: an AMOUNT or BARE that is neither MENTION nor REFUSED.
  - a HEDGED or ambiguous amount, two different committed amounts, or a committed amount together with a
    ZERO refusal                                                                    → None;
  - one committed amount (repeats allowed)                                          → it;
  - no committed amount, and a ZERO, or a REFUSED amount under a negated donation
    verb ("won't donate even $1", "will not donate 50 cents") or after "even"      → 0.0;
  - otherwise ("I can't do a dollar", "maybe later")                                → None.
  "I can't do a dollar, but 30 cents is fine" → 0.3 (the dollar is refused, 30 cents committed).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any
from collections.abc import Mapping, Sequence

from engage_jax.fields import Check, Int, Num, OneOf, field

DEFAULT_ES_PATTERN = (
    r"\bfeel(?:ing|s)? (?:so |much |a lot |a bit |way )?better\b"
    r"|\b(?:that|this|it|you) (?:really |truly )?help(?:s|ed)\b"
    r"|\byou(?:'ve| have) been (?:a |such a )?(?:great |big |real |huge )?help\b")
DEFAULT_ES_LAST_N = 2
DONATION_CAP = 2.0
CONFIG_READOUTS = ("sampled", "expected")     # config reward.readout
READOUTS = (*CONFIG_READOUTS, "both")         # RewardSettings.readout ("both": the evaluation's)

# ----------------------------------------------------------------------------- donation grammar
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUE = {**{w: i for i, w in enumerate(_UNITS)}, **{w: 20 + 10 * i for i, w in enumerate(_TENS)},
               "a": 1, "an": 1, "single": 1}
_U = "|".join(sorted(_UNITS, key=len, reverse=True))
_T = "|".join(_TENS)
_W99 = rf"(?:(?:{_T})(?:[\s-](?:one|two|three|four|five|six|seven|eight|nine))?|{_U})"
_WNUM = rf"(?:(?:a|one|{_U})\s+hundred(?:\s+(?:and\s+)?{_W99})?|{_W99}|an?)"
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_DOLLAR = r"(?:dollars?|bucks?|usd)"
_COINS = {"penny": 0.01, "pennies": 0.01, "nickel": 0.05, "nickels": 0.05, "dime": 0.10,
          "dimes": 0.10, "quarter": 0.25, "quarters": 0.25}
_DONATE = r"(?:donat\w*|give|giving|gave|contribut\w*|pledg\w*|spare|offer\w*|pay|paying)"


def _word_number(s: str) -> float:
  """'a' → 1, 'twenty-five' → 25, 'one hundred and five' → 105 (words of `_WNUM`)."""
  total, cur = 0, 0
  for w in re.split(r"[\s-]+", s.strip()):
    if w == "hundred":
      cur = max(cur, 1) * 100
    elif w != "and":
      cur += _WORD_VALUE[w]
  return float(total + cur)


def _num(s: str) -> float:
  return float(s.replace(",", ""))


def _cents(s: str | None) -> float:
  if not s:
    return 0.0
  return (_num(s) if s[0].isdigit() or s[0] == "." else _word_number(s)) / 100.0


# (pattern, value of the match); all matches are collected, overlaps resolved longest-first.
_AMOUNTS = [
    (rf"\$\s*({_NUM})(?:\s*{_DOLLAR})?", lambda m: _num(m[1])),
    (rf"({_NUM})\s*\$", lambda m: _num(m[1])),
    (rf"\b({_NUM})\s*{_DOLLAR}\b(?:\s*(?:and\s+)?(\d{{1,2}}|{_W99})(?:\s*cents?\b|(?=\s*[.!,;]|\s*$)))?",
     lambda m: _num(m[1]) + _cents(m[2])),
    (rf"\b({_WNUM})\s+{_DOLLAR}\b(?:\s*(?:and\s+)?(\d{{1,2}}|{_W99})(?:\s*cents?\b|(?=\s*[.!,;]|\s*$)))?"
     r"(\s+and\s+a\s+half)?", lambda m: _word_number(m[1]) + _cents(m[2]) + (0.5 if m[3] else 0.0)),
    (rf"(?<![\d.])({_NUM})\s*(?:cents?\b|¢|c\b)", lambda m: None if "." in m[1] else _num(m[1]) / 100.0),
    (rf"\b({_WNUM})\s+cents?\b", lambda m: _word_number(m[1]) / 100.0),
    (r"\bhalf\s+(?:of\s+)?an?\s+(?:dollar|buck)\b", lambda m: 0.5),
    (r"\b(?:an?\s+)?quarter\s+of\s+an?\s+(?:dollar|buck)\b", lambda m: 0.25),
    (rf"\b({_WNUM})\s+(pennies|penny|nickels?|dimes?|quarters?)\b(?!\s+of\b)",
     lambda m: _word_number(m[1]) * _COINS[m[2]]),
]
_AMOUNTS = [(re.compile(p), f) for p, f in _AMOUNTS]
_BARE = re.compile(rf"\b{_DONATE}\s+(?:(?:the|just|only|about|around|exactly)\s+)?({_NUM})\b(?!\s*(?:%|percent))")
_WHOLE_NUMBER = re.compile(rf"^\W*({_NUM})\W*$")
_NOT_NEGATION = re.compile(r"\b(?:(?:do|did|would)\s*(?:n't|not)\s+mind|not\s+(?:hesitate|only)|"
                           r"no\s+problem|not\s+a\s+problem|why\s+not)\b|n't\s+hurt\b")
_NEGATION = re.compile(r"n't\b|\b(?:not|never|cannot|cant|wont|dont)\b")
_NEG = r"(?:n't|\b(?:not|never|cannot|cant|wont|dont))\s+"
_FILLER = r"(?:(?:going|want|wish|plan|able|choose|like|willing|have|need)\s+to\s+|gonna\s+|be\s+|really\s+|even\s+|to\s+)*"
_NEG_DONATE = re.compile(_NEG + _FILLER + _DONATE)
_EVEN = re.compile(r"\beven\s*$")
_MENTION_BEFORE = re.compile(r"\b(?:of|from|than)\s+(?:(?:my|the|your|our|this|that)\s+)?$")
_ALL_OF = re.compile(r"\ball\s+of\s+(?:(?:my|the|your|our|this|that)\s+)?$")
_MENTION_AFTER = re.compile(r"^\s*(?:(?:per|a|an|each|every)\s+(?:month|year|week|day|child|kid)|"
                            r"monthly|yearly|annually|weekly)\b")
_HEDGE = re.compile(r"\b(?:more|less|fewer)\s+than\s*$|\b(?:at\s+(?:most|least)|up\s+to|over|under)\s*$")
_ZERO = re.compile(
    rf"\b{_DONATE}\s+(?:absolutely\s+)?(?:nothing|zero|none)\b"
    r"|\bnot\s+(?:even\s+)?(?:a|one)\s+(?:single\s+)?(?:cent|penny|dime|dollar|thing)\b"
    rf"|{_NEG}{_FILLER}{_DONATE}\s+(?:a\s+thing|anything)\b"
    rf"|\brather\s+not\s+(?:{_DONATE}|make)|\bno\s+donations?\b|\bnot\s+(?:be\s+)?mak(?:e|ing)\s+a\s+donation"
    r"|\bdeclin(?:e|ing)\b|\bkeep\s+(?:my|the)\s+(?:full\s+|whole\s+|entire\s+)?(?:bonus|payment|money|earnings)")
_WEAK_ZERO = re.compile(r"\b(?:nothing|none|zero)\b|^\W*(?:no|nope|0)\W*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE = re.compile(r",\s+|;\s*|\s+(?:but|however|though|although)\s+")


@dataclasses.dataclass(frozen=True)
class _Amount:
  value: float | None  # None: an amount that reads two ways ("0.30 cents")
  refused: bool       # a negation precedes it in its clause
  strong: bool        # ... and that negation governs a donation verb, or "even" precedes it
  mention: bool       # not the persuadee's own donation (question, "of my $2", "per month")
  hedged: bool        # "more than $1", "up to $2"


def _find_amounts(clause: str, outcome_line: bool) -> list[tuple[int, int, float]]:
  """(start, end, dollars) of every amount in `clause`, non-overlapping, longest match first."""
  found = [(m.start(), m.end(), f(m)) for rx, f in _AMOUNTS for m in rx.finditer(clause)]
  if outcome_line:
    found += [(m.start(1), m.end(1), _num(m[1])) for m in _BARE.finditer(clause)]
    found += [(m.start(1), m.end(1), _num(m[1])) for m in _WHOLE_NUMBER.finditer(clause)]
  found.sort(key=lambda x: (x[0], x[0] - x[1]))
  out: list[tuple[int, int, float]] = []
  for a in found:
    if not out or a[0] >= out[-1][1]:
      out.append(a)
  return out


def _clause_amounts(clause: str, question: bool, outcome_line: bool) -> list[_Amount]:
  """The amounts of one clause, each classified (see the module docstring)."""
  out = []
  for start, end, value in _find_amounts(clause, outcome_line):
    before, after = clause[:start], clause[end:]
    refused = bool(_NEGATION.search(before))
    mention = question or bool(_MENTION_AFTER.match(after)) or (
        bool(_MENTION_BEFORE.search(before)) and not _ALL_OF.search(before))
    out.append(_Amount(value, refused, refused and bool(_NEG_DONATE.search(before) or _EVEN.search(before)),
                       mention, bool(_HEDGE.search(before))))
  return out


def _normalise(text: str) -> str:
  t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
  return _NOT_NEGATION.sub(" ok ", t)


def parse_donation(text: str, cap: float = DONATION_CAP, *, outcome_line: bool = True) -> float | None:
  """Dollars the persuadee commits to in `text`, clipped to [0, cap]; None if unparsed/ambiguous.

  outcome_line: `text` answers the outcome request (bare numbers and a bare "nothing" count);
  False for free chat turns. The grammar is in the module docstring.
  """
  if not text or not text.strip():
    return None
  t = _normalise(text)
  amounts: list[_Amount] = []
  zero = False
  for sentence in filter(None, (s.strip() for s in _SENTENCE.split(t))):
    question = sentence.endswith("?")
    for clause in filter(None, (c.strip() for c in _CLAUSE.split(sentence))):
      found = _clause_amounts(clause, question, outcome_line)
      amounts += found
      zero |= bool(_ZERO.search(clause)) or (not found and bool(_NEG_DONATE.search(clause)))
  own = [a for a in amounts if not a.mention]
  committed = {round(a.value, 6) for a in own if not a.refused and a.value is not None}
  if any(a.hedged or a.value is None for a in own) or len(committed) > 1 or (committed and zero):
    return None
  if committed:
    return float(min(max(committed.pop(), 0.0), cap))
  if zero or any(a.strong for a in own):
    return 0.0
  if outcome_line and not amounts and _WEAK_ZERO.search(t.strip()):
    return 0.0
  return None


def es_engaged(user_texts: Sequence[str], pattern: str = DEFAULT_ES_PATTERN,
               last_n: int = DEFAULT_ES_LAST_N) -> bool:
  """True if any of the user's last `last_n` texts matches `pattern` (case-insensitive)."""
  if last_n <= 0:
    raise ValueError(f"es_engaged: last_n must be positive, got {last_n}")
  rx = re.compile(pattern, re.I)
  return any(rx.search(t or "") for t in list(user_texts)[-last_n:])


class _Regex(Check):
  what = "must be a valid regular expression (empty: the default)"

  def __call__(self, v) -> bool:
    if not isinstance(v, str):
      return False
    try:
      re.compile(v)
    except re.error:
      return False
    return True


@dataclasses.dataclass(frozen=True)
class RewardSettings:
  """The reward's knobs: ES regex and how many of the user's last turns it searches; P4G cap;
  P4G readout ("sampled": sample the outcome answer and parse it; "expected": the simulator's
  mean over the canonical answers for `outcome_amounts`, engage_jax/readout.py; "both": the
  expected value as the reward, the sampled one recorded beside it, for evaluation)."""
  es_pattern: str = field(DEFAULT_ES_PATTERN, "ES: the regex of an engaged user turn (empty: the default)",
                          _Regex(), encode=lambda p: "" if p == DEFAULT_ES_PATTERN else p)
  es_last_n: int = field(DEFAULT_ES_LAST_N, "ES: the user's last turns the regex searches", Int(1))
  donation_cap: float = field(DONATION_CAP, "P4G: donations are capped at this many dollars", Num(0.0, lo_open=True))
  readout: str = field("sampled", "P4G outcome: sampled (sample the answer, parse it) | expected (the simulator's "
                                  "mean over the corpus amounts, engage_jax/readout.py)", OneOf(CONFIG_READOUTS))
  outcome_amounts: tuple[float, ...] = field((), "the canonical amounts of readout expected (from the corpus)",
                                             key=False)

  def __post_init__(self):
    if not self.es_pattern:
      object.__setattr__(self, "es_pattern", DEFAULT_ES_PATTERN)

  @classmethod
  def from_any(cls, cfg: Any = None) -> RewardSettings:
    """From None, a mapping or an object with these attributes (e.g. a ConfigDict); missing,
    None or empty values take the defaults."""
    if isinstance(cfg, cls):
      return cfg
    kw = {}
    for f in dataclasses.fields(cls):
      v = None if cfg is None else cfg.get(f.name) if isinstance(cfg, Mapping) else getattr(cfg, f.name, None)
      if v is not None and v != "":
        kw[f.name] = v
    readout = str(kw.get("readout", "sampled"))
    if readout not in READOUTS:
      raise ValueError(f"reward readout must be one of {READOUTS}, got {readout!r}")
    return cls(**{**kw, "readout": readout,
                  "outcome_amounts": tuple(float(x) for x in kw.get("outcome_amounts", ()))})


def reward(task: str, user_texts: Sequence[str], cfg: Any = None, outcome: Mapping | None = None
           ) -> float | None:
  """Scalar reward of a finished conversation; None for a P4G outcome that does not parse.

  user_texts: the user's turns in order; outcome: the dialogue's `outcome` record, if any.
  cfg (mapping or ConfigDict, optional): `es_pattern`, `es_last_n`, `donation_cap`.
  ES: 1.0 if `es_engaged`, else 0.0. P4G: the parsed donation: the outcome's `outcome_text` if
  present (an outcome line), else the user texts from last to first (free text: no bare
  numbers), else a numeric `outcome["donation"]`; None if none of them gives one.
  """
  texts, outcome = list(user_texts), dict(outcome or {})
  if task == "es":
    st = RewardSettings.from_any(cfg)
    return 1.0 if es_engaged(texts, st.es_pattern, st.es_last_n) else 0.0
  if task == "p4g":
    cap = RewardSettings.from_any(cfg).donation_cap
    candidates = [(outcome["outcome_text"], True)] if outcome.get("outcome_text") else []
    candidates += [(t, False) for t in reversed(texts)]
    for text, is_outcome in candidates:
      value = parse_donation(text, cap, outcome_line=is_outcome)
      if value is not None:
        return value
    if outcome.get("donation") is not None:
      return float(min(max(float(outcome["donation"]), 0.0), cap))
    return None
  raise ValueError(f"reward: unknown task {task!r}; expected 'es' or 'p4g'")
