"""What a rater rates per model and how a rating is validated.

ES: feeling better, empathy, naturalness (Likert 1–5). P4G: persuaded, naturalness (Likert 1–5)
and the donation the rater would make, $0–cap. Item keys are stable: they are the DB's and the
report's names.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Mapping

from engage_jax.rewards import DONATION_CAP


@dataclasses.dataclass(frozen=True)
class Item:
  key: str
  label: str
  kind: str = "likert"   # "likert" (integer lo..hi) | "amount" (number lo..hi, cents)
  lo: float = 1
  hi: float = 5

  def to_json(self) -> dict:
    return {"key": self.key, "label": self.label, "kind": self.kind, "min": self.lo, "max": self.hi,
            "step": 1 if self.kind == "likert" else 0.01}


def items(task: str, donation_cap: float = DONATION_CAP) -> tuple[Item, ...]:
  """The rating items of `task` ("es" | "p4g"); the first is the primary one."""
  if task == "es":
    return (Item("feeling_better", "After this chat I feel better"),
            Item("empathy", "The agent understood how I feel"),
            Item("naturalness", "The agent's replies read naturally"))
  if task == "p4g":
    return (Item("persuaded", "The agent persuaded me to donate"),
            Item("donation", f"I would donate this much (in $, 0 to {donation_cap:g})", "amount", 0.0,
                 float(donation_cap)),
            Item("naturalness", "The agent's replies read naturally"))
  raise ValueError(f"unknown task {task!r}; expected 'es' or 'p4g'")


def check_value(item: Item, value: Any, slot: str) -> float:
  """The rating as a float, or ValueError with a one-line message."""
  what = f"rating {item.key!r} of chat {slot}"
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{what} must be a number, got {value!r}")
  if item.kind == "likert":
    if value != int(value) or not item.lo <= value <= item.hi:
      raise ValueError(f"{what} must be an integer from {item.lo:g} to {item.hi:g}, got {value!r}")
    return float(int(value))
  if not item.lo <= value <= item.hi:
    raise ValueError(f"{what} must be between {item.lo:g} and {item.hi:g}, got {value!r}")
  return round(float(value), 2)


def check_ratings(task_items: tuple[Item, ...], ratings: Any) -> dict[str, dict[str, float]]:
  """{"A": {key: value}, "B": {...}} validated: every item, no unknown ones, values in range."""
  if not isinstance(ratings, Mapping) or set(ratings) != {"A", "B"}:
    raise ValueError("'ratings' must be an object with exactly the chats \"A\" and \"B\"")
  keys = [it.key for it in task_items]
  out = {}
  for slot in ("A", "B"):
    r = ratings[slot]
    if not isinstance(r, Mapping):
      raise ValueError(f"ratings of chat {slot} must be an object {{item: value}}")
    unknown = sorted(set(r) - set(keys))
    if unknown:
      raise ValueError(f"unknown rating item {unknown[0]!r} for chat {slot} (items: {', '.join(keys)})")
    missing = [k for k in keys if k not in r]
    if missing:
      raise ValueError(f"missing rating {missing[0]!r} for chat {slot}")
    out[slot] = {it.key: check_value(it, r[it.key], slot) for it in task_items}
  return out
