"""Probes of what the SFT'd models learned in the sandbox world (whose dynamics are known).

`es_simulator_table(sim, tok)` asks the simulator, for every emotion × agent strategy, how likely
its next reply is an engaged ("feel better") line rather than a continuation: the sandbox world
says P_HELP (0.6) for the helpful strategy and P_BASE (0.08) otherwise. Probabilities are the
model's sequence probabilities of the world's candidate replies, renormalised over them.
"""
from __future__ import annotations

import numpy as np

from engage_jax.data import chat, sandbox
from engage_jax.data.dialogue import AGENT, Turn
from engage_jax.sampling import sequence_logprobs


def es_simulator_table(sim_model, tok) -> dict[tuple[str, str], float]:
  """{(emotion, strategy): P(engaged reply | opening, one agent turn)} under the simulator."""
  rows, prompts, completions = [], [], []
  for emo in sandbox.EMOTIONS:
    cond = {"emotion_type": emo, "problem_type": sandbox.PROBLEMS[0],
            "situation": sandbox.ES_SITUATION.format(adj=sandbox.EMOTION_ADJ[emo],
                                                     phrase=sandbox.PROBLEM_PHRASE[sandbox.PROBLEMS[0]])}
    opening = sandbox.opening_turns("es", cond)
    adj = sandbox.EMOTION_ADJ[emo]
    replies = [(True, chat.with_end_marker(t)) for t in sandbox.ES_ENGAGED]
    replies += [(False, t.format(adj=adj)) for t in sandbox.ES_CONTINUE]
    for strat in sandbox.ES_STRATEGIES:
      agent = Turn(AGENT, sandbox.ES_TEMPLATES[strat][0], strat)
      prompt = tok.apply_chat(chat.simulator_messages("es", cond, opening + [agent]), add_generation_prompt=True)
      for engaged, text in replies:
        rows.append((emo, strat, engaged))
        prompts.append(prompt)
        completions.append(tok.encode(text) + [tok.end_of_turn_id])
  lp = np.asarray(sequence_logprobs(sim_model, prompts, completions))
  out = {}
  for emo in sandbox.EMOTIONS:
    for strat in sandbox.ES_STRATEGIES:
      idx = [i for i, r in enumerate(rows) if r[:2] == (emo, strat)]
      p = np.exp(lp[idx] - lp[idx].max())
      eng = np.array([rows[i][2] for i in idx])
      out[(emo, strat)] = float(p[eng].sum() / p.sum())
  return out
