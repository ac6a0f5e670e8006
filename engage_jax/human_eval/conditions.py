"""The study's scenarios: the held-out evaluation conditions (same ids as eval_sft/eval_dpo), and
how a scenario is shown to a rater."""
from __future__ import annotations

from collections.abc import Mapping

from engage_jax import build

INSTRUCTIONS = {
    "es": ("Imagine you are the person described below and talk about it with the agent, in your own "
           "words. You will chat with agent A, then with agent B, and then rate both."),
    "p4g": ("Play the person described below. The agent will talk with you about a donation to Save the "
            "Children. You will chat with agent A, then with agent B, and then rate both."),
}


def pool(cfg, n: int | None = None) -> list[dict]:
  """[{"id", "condition"}] of the first `n` held-out conditions (default config.eval.n_conditions),
  from `build.roots(cfg, corpus, "eval", n)`."""
  n = int(n or cfg.eval.n_conditions)
  corpus = build.load_corpus(cfg) if cfg.data.source != "sandbox" else {}
  return [{"id": d.id, "condition": dict(d.condition)} for d in build.roots(cfg, corpus, "eval", n)]


def display(condition: Mapping[str, str]) -> list[list[str]]:
  """[[label, value]] of the non-empty condition fields, e.g. [["Emotion type", "anxiety"], ...]."""
  return [[k.replace("_", " ").strip().capitalize(), str(v)] for k, v in condition.items() if str(v).strip()]
