"""Chat formatting of dialogues for the agent and the user simulator.

Agent view (`agent_messages`): system prompt of the task; agent turns are "assistant", user turns
are "user". The agent never sees the condition.

Simulator view (`simulator_messages`): system prompt that states the user's condition; user turns
are "assistant", agent turns are "user". The simulator ends a chat by appending `END_MARKER` to its
last turn. For P4G it then gets `OUTCOME_REQUEST` as one more "user" message and answers with
`outcome_line(donation)`, e.g. "I will donate $0.50." (parsed back by `rewards.parse_donation`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from engage_jax.data.dialogue import AGENT, USER, Turn

END_MARKER = "[END]"
OUTCOME_REQUEST = "[OUTCOME] How much will you donate?"

AGENT_SYSTEM = {
    "es": "You are a supporter. Help the seeker feel better.",
    "p4g": "You are a persuader. Ask the user to donate to Save the Children.",
}
SIMULATOR_SYSTEM = {
    "es": "You are a seeker who needs emotional support.",
    "p4g": "You are a persuadee talking about a donation to Save the Children.",
}


def _check_task(task: str) -> None:
  if task not in AGENT_SYSTEM:
    raise ValueError(f"unknown task {task!r}; expected one of {tuple(AGENT_SYSTEM)}")


def format_condition(condition: Mapping[str, str], keys: Sequence[str] | None = None) -> str:
  """"key: value" pairs joined by "; " (empty values skipped; `keys` selects and orders)."""
  keys = list(condition) if keys is None else list(keys)
  return "; ".join(f"{k}: {condition[k]}" for k in keys if str(condition.get(k, "")).strip())


def agent_messages(task: str, turns: Sequence[Turn]) -> list[dict]:
  """[system] + turns with agent → "assistant", user → "user"."""
  _check_task(task)
  msgs = [{"role": "system", "content": AGENT_SYSTEM[task]}]
  for t in turns:
    msgs.append({"role": "assistant" if t.role == AGENT else "user", "content": t.text})
  return msgs


def simulator_messages(task: str, condition: Mapping[str, str], turns: Sequence[Turn], *,
                       mark_end: bool = False, condition_keys: Sequence[str] | None = None
                       ) -> list[dict]:
  """[system stating the condition] + turns with user → "assistant", agent → "user".

  mark_end: append `END_MARKER` (after a space) to the last user turn (training targets).
  """
  _check_task(task)
  cond = format_condition(condition, condition_keys)
  system = SIMULATOR_SYSTEM[task] + (f" {cond}." if cond else "")
  msgs = [{"role": "system", "content": system}]
  last_user = max((i for i, t in enumerate(turns) if t.role == USER), default=-1)
  for i, t in enumerate(turns):
    text = t.text
    if mark_end and i == last_user:
      text = with_end_marker(text)
    msgs.append({"role": "assistant" if t.role == USER else "user", "content": text})
  return msgs


def with_end_marker(text: str) -> str:
  """`text` followed by " [END]" (idempotent)."""
  return text if has_end_marker(text) else f"{text} {END_MARKER}".strip()


def has_end_marker(text: str) -> bool:
  return END_MARKER in text


def strip_end_marker(text: str) -> str:
  """`text` without END_MARKER (and without the space before it)."""
  return text.replace(END_MARKER, "").strip()


def outcome_line(donation: float) -> str:
  """The simulator's P4G outcome answer, e.g. "I will donate $0.50."."""
  return f"I will donate ${float(donation):.2f}."
