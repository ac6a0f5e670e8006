"""Shared fixtures-as-functions for the search tests (no conftest: the lead owns it)."""
from __future__ import annotations

from engage_jax.data.dialogue import Dialogue, Turn

ES_CONDITION = {"emotion_type": "sadness", "problem_type": "job crisis", "situation": "lost job"}
ARMS = {"good": 0.9, "ok": 0.5, "bad": 0.1}


def es_roots(n: int, prefix: str = "c") -> list[Dialogue]:
  return [Dialogue(f"{prefix}{i}", "es", [Turn("user", f"hi, I feel low ({i})")],
                   dict(ES_CONDITION)) for i in range(n)]
