"""Engagement rewards: ES "feels better" regex and P4G donation parsing.

- ES: binary. `es_engaged` searches the seeker's last `last_n` turns (case-insensitive) for an
  expression of feeling better / being helped (DESIGN.md section 1).
- P4G: the donation in dollars stated in the persuadee's outcome line, parsed by `parse_donation`
  and clipped to [0, cap] (cap 2.0 by default, the task's maximum).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

DEFAULT_ES_PATTERN = (
    r"\bfeel(?:ing|s)? (?:so |much |a lot |a bit |way )?better\b"
    r"|\b(?:that|this|it|you) (?:really |truly )?help(?:s|ed)\b"
    r"|\byou(?:'ve| have) been (?:a |such a )?(?:great |big |real |huge )?help\b")
DEFAULT_ES_LAST_N = 2
DONATION_CAP = 2.0

_WORD_NUMBERS = {
    "zero": 0.0, "one": 1.0, "a": 1.0, "an": 1.0, "two": 2.0, "three": 3.0, "four": 4.0,
    "five": 5.0, "six": 6.0, "seven": 7.0, "eight": 8.0, "nine": 9.0, "ten": 10.0,
    "twenty": 20.0, "fifty": 50.0, "half a": 0.5, "a half": 0.5, "half": 0.5,
    "a quarter": 0.25, "quarter": 0.25, "twenty five": 25.0, "twenty-five": 25.0,
    "seventy five": 75.0, "seventy-five": 75.0, "ten": 10.0, "a hundred": 100.0,
    "one hundred": 100.0,
}
_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_DOLLAR_SIGN = re.compile(r"\$\s*" + _NUM)
_NUM_DOLLARS = re.compile(_NUM + r"\s*(?:dollars?|usd|bucks?)\b", re.I)
_NUM_CENTS = re.compile(_NUM + r"\s*(?:cents?|c)\b", re.I)
_WORDS_ALT = "|".join(sorted((re.escape(w) for w in _WORD_NUMBERS), key=len, reverse=True))
_WORD_DOLLARS = re.compile(r"\b(" + _WORDS_ALT + r")\s+(?:dollars?|bucks?)\b", re.I)
_WORD_CENTS = re.compile(r"\b(" + _WORDS_ALT + r")\s+cents?\b", re.I)
_ZERO = re.compile(
    r"\b(?:nothing|zero|none|no donation|not (?:going to |gonna )?(?:to )?donate|won'?t donate"
    r"|will not donate|can'?t donate|cannot donate|don'?t (?:want to )?donate"
    r"|do not (?:want to )?donate|not donating|decline)\b", re.I)


def es_engaged(user_texts: Sequence[str], pattern: str = DEFAULT_ES_PATTERN,
               last_n: int = DEFAULT_ES_LAST_N) -> bool:
  """True if any of the user's last `last_n` texts matches `pattern` (case-insensitive)."""
  if last_n <= 0:
    raise ValueError(f"es_engaged: last_n must be positive, got {last_n}")
  rx = re.compile(pattern, re.I)
  return any(rx.search(t or "") for t in list(user_texts)[-last_n:])


def parse_donation(text: str, cap: float = DONATION_CAP) -> float | None:
  """Dollar amount stated in `text`, clipped to [0, cap]; None if no amount is found.

  Recognised (first match wins, in this order): "$0.50", "0.5 dollars", "50 cents",
  "one dollar" / "half a dollar", "twenty cents"; then refusals ("nothing", "won't donate",
  "no donation", ...) give 0.0.
  """
  if not text:
    return None
  value = None
  if (m := _DOLLAR_SIGN.search(text)):
    value = float(m.group(1))
  elif (m := _NUM_CENTS.search(text)) and not _NUM_DOLLARS.search(text):
    value = float(m.group(1)) / 100.0
  elif (m := _NUM_DOLLARS.search(text)):
    value = float(m.group(1))
  elif (m := _WORD_DOLLARS.search(text)):
    value = _WORD_NUMBERS[m.group(1).lower()]
  elif (m := _WORD_CENTS.search(text)):
    value = _WORD_NUMBERS[m.group(1).lower()] / 100.0
  elif _ZERO.search(text):
    value = 0.0
  if value is None:
    return None
  return float(min(max(value, 0.0), cap))


@dataclasses.dataclass(frozen=True)
class RewardSettings:
  """The reward's knobs: ES regex and how many of the user's last turns it searches; P4G cap."""
  es_pattern: str = DEFAULT_ES_PATTERN
  es_last_n: int = DEFAULT_ES_LAST_N
  donation_cap: float = DONATION_CAP

  @classmethod
  def from_any(cls, cfg: Any = None) -> "RewardSettings":
    """From None, a mapping or an object with these attributes (e.g. a ConfigDict); missing,
    None or empty values take the defaults."""
    if isinstance(cfg, cls):
      return cfg
    def get(key, default):
      if cfg is None:
        return default
      v = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
      return default if v is None or v == "" else v
    return cls(str(get("es_pattern", DEFAULT_ES_PATTERN)), int(get("es_last_n", DEFAULT_ES_LAST_N)),
               float(get("donation_cap", DONATION_CAP)))


def reward(task: str, dialogue_or_texts: Any, cfg: Any = None) -> float:
  """Scalar reward of a finished conversation.

  dialogue_or_texts: a `Dialogue` or the list of the user's texts (in order).
  cfg (mapping or ConfigDict, optional): `es_pattern`, `es_last_n`, `donation_cap`.
  ES: 1.0 if `es_engaged`, else 0.0. P4G: the parsed donation; for a `Dialogue`, the outcome's
  `outcome_text` if present, else the user texts from last to first, else `outcome["donation"]`;
  0.0 if nothing parses.
  """
  from engage_jax.data.dialogue import USER, Dialogue
  if isinstance(dialogue_or_texts, Dialogue):
    texts = [t.text for t in dialogue_or_texts.turns if t.role == USER]
    outcome = dialogue_or_texts.outcome
  else:
    texts = list(dialogue_or_texts)
    outcome = {}
  if task == "es":
    st = RewardSettings.from_any(cfg)
    return 1.0 if es_engaged(texts, st.es_pattern, st.es_last_n) else 0.0
  if task == "p4g":
    cap = RewardSettings.from_any(cfg).donation_cap
    candidates: list[str] = []
    if outcome.get("outcome_text"):
      candidates.append(outcome["outcome_text"])
    candidates.extend(reversed(texts))
    for text in candidates:
      value = parse_donation(text, cap)
      if value is not None:
        return value
    if "donation" in outcome:
      return float(min(max(float(outcome["donation"]), 0.0), cap))
    return 0.0
  raise ValueError(f"reward: unknown task {task!r}; expected 'es' or 'p4g'")


def mean_reward(task: str, items: Iterable[Any], cfg: Any = None) -> float:
  """Mean of `reward` over dialogues (or text lists); 0.0 for an empty input."""
  values = [reward(task, x, cfg) for x in items]
  return sum(values) / len(values) if values else 0.0
