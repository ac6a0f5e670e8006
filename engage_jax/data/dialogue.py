"""Canonical dialogue records shared by every stage.

A `Dialogue` is an ordered list of `Turn`s between an *agent* (ES supporter / P4G persuader) and a
*user* (ES seeker / P4G persuadee), plus the user's *condition* (what the simulator is conditioned
on) and the *outcome* (what happened at the end: ES engagement, P4G donation).
"""
from __future__ import annotations

import dataclasses
from typing import Any

AGENT = "agent"
USER = "user"
ROLES = (AGENT, USER)
TASKS = ("es", "p4g")
# Condition fields each task's user simulator needs in every conversation it plays (search roots;
# SearchConfig.required_condition overrides). P4G persona fields vary by corpus: only a non-empty
# condition is required.
REQUIRED_CONDITION: dict[str, tuple[str, ...]] = {
    "es": ("emotion_type", "problem_type", "situation"),
    "p4g": (),
}


@dataclasses.dataclass
class Turn:
  """One utterance. `strategy` is the agent's dialogue act label where the corpus has one."""
  role: str
  text: str
  strategy: str | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")


@dataclasses.dataclass
class Dialogue:
  """A conversation with its user condition and outcome.

  condition: ES {"emotion_type", "problem_type", "situation"}; P4G persona fields (str -> str).
  outcome:   ES {"engaged": bool, "initial_emotion_intensity"?, "final_emotion_intensity"?};
             P4G {"donation": float}. Simulated dialogues also carry {"reward": float}.
  """
  id: str
  task: str
  turns: list[Turn]
  condition: dict[str, str]
  outcome: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"dialogue {self.id!r}: unknown task {self.task!r}; expected one of {TASKS}")

  @property
  def num_agent_turns(self) -> int:
    return sum(t.role == AGENT for t in self.turns)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, obj: dict) -> Dialogue:
    turns = [Turn(**t) for t in obj["turns"]]
    return cls(id=obj["id"], task=obj["task"], turns=turns, condition=dict(obj["condition"]),
               outcome=dict(obj.get("outcome", {})))


class LoadedDialogues(list):
  """A `list[Dialogue]` returned by the corpus loaders, plus what was skipped.

  `skipped`: number of records dropped with `skip_bad=True`; `errors`: their error messages.
  """

  def __init__(self, items=(), skipped: int = 0, errors: list[str] | None = None):
    super().__init__(items)
    self.skipped = skipped
    self.errors = list(errors or [])


def merge_consecutive(turns: list[Turn]) -> list[Turn]:
  """Joins consecutive same-role turns with a space; a merged turn keeps its first strategy."""
  out: list[Turn] = []
  for t in turns:
    if out and out[-1].role == t.role:
      prev = out[-1]
      out[-1] = Turn(prev.role, f"{prev.text} {t.text}".strip(), prev.strategy or t.strategy)
    else:
      out.append(Turn(t.role, t.text, t.strategy))
  return out
