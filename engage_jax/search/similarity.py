"""Near-duplicate pruning of sibling candidates (SearchConfig.prune_similarity / similarity).

    similarity(a, b, "difflib")    # float in [0, 1]
    prune_duplicates(cands, threshold=0.9, kind="jaccard")
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

from engage_jax.search.base import Expansion

_WORD = re.compile(r"\w+")


def difflib_ratio(a: str, b: str) -> float:
  """difflib.SequenceMatcher ratio of the two texts (no autojunk)."""
  return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def jaccard(a: str, b: str) -> float:
  """Jaccard index of the lower-cased word sets (punctuation ignored); 1.0 for two empty texts."""
  sa, sb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
  return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


# SearchConfig.similarity → function
SIMILARITIES: dict[str, Callable[[str, str], float]] = {"difflib": difflib_ratio, "jaccard": jaccard}


def similarity(a: str, b: str, kind: str = "difflib") -> float:
  """Similarity in [0, 1] of two agent texts by `SIMILARITIES[kind]`."""
  return SIMILARITIES[kind](a, b)


def prune_duplicates(cands: Sequence[Expansion], threshold: float | None,
                     kind: str = "difflib") -> list[Expansion]:
  """Keeps candidates (in order) whose agent text is less than `threshold` similar to every
  earlier kept one; the first is kept. threshold None: keep all."""
  if threshold is None:
    return list(cands)
  kept: list[Expansion] = []
  for e in cands:
    if all(similarity(e.agent.text, x.agent.text, kind) < threshold for x in kept):
      kept.append(e)
  return kept
