"""The experiment's named variants and its up-front checks (one-line errors, before any work).

  sft         the SFT agent as it is
  future      i×MCTS with search.reward_horizon="future" (the end-of-chat outcome) → DPO
  turn        i×MCTS with search.reward_horizon="turn" (the next user turn only) → DPO
  best_of_n   the SFT agent decoding best-of-N (experiment.best_of_n candidates per turn, each
              valued by one rollout with the search's simulator)
  corpus_mix  DPO on the "future" search's pairs + as many corpus pairs (baselines.corpus_pairs),
              for as many DPO steps as "future" took when it ran (equal compute)
  rft         SFT of the SFT agent on the "future" search's chosen turns with value >=
              experiment.rft_min_value (rejection-sampling fine-tuning)
  transfer    DPO of this task's SFT agent on the OTHER task's "future" search pairs (same seed,
              read from the experiment directory experiment.transfer_from), evaluated on this
              task's conditions: cross-task transfer, to set beside the in-task gain of "future"
"""
from __future__ import annotations

from pathlib import Path
import json

from engage_jax.errors import InputError

VARIANTS = {
    "sft": "the SFT agent (no search)",
    "future": "i×MCTS, reward = end-of-chat outcome (rollouts) → DPO",
    "turn": "i×MCTS, reward = the next user turn only (no rollouts) → DPO",
    "best_of_n": "SFT agent, best of N candidates per turn by one simulator rollout each",
    "corpus_mix": "DPO on the future search's pairs + corpus pairs (chosen = successful corpus turn)",
    "rft": "SFT on the future search's chosen turns (value >= rft_min_value)",
    "transfer": "DPO on the other task's future-search pairs (experiment.transfer_from)",
}


def parse_list(text, what: str) -> list[str]:
  """'a, b' or ['a', 'b'] → ['a', 'b'] (order kept, duplicates dropped)."""
  items = text.split(",") if isinstance(text, str) else list(text)
  return list(dict.fromkeys(str(x).strip() for x in items if str(x).strip()))


def parse_seeds(text) -> list[int]:
  out = []
  for s in parse_list(text, "seeds"):
    try:
      out.append(int(s))
    except ValueError:
      raise InputError(f"seeds must be integers; got {s!r}", "--seeds") from None
  if not out:
    raise InputError("no seeds", "--seeds")
  return out


def transfer_pairs(source, seed: int) -> list:
  """The pair files of the other task's "future" search for `seed` under experiment dir `source`."""
  return sorted((Path(source) / f"seed-{seed}" / "future" / "pairs").glob("shard-*.jsonl"))


def check(cfg, variants: list[str], seeds: list[int]) -> None:
  """InputError (one line) for an unknown variant, the oracle on real data, an empty ensemble,
  a transfer without the other task's finished search."""
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    raise InputError(f"unknown variant(s) {', '.join(map(repr, bad))}; variants: {', '.join(VARIANTS)}",
                     "--variants")
  if not variants:
    raise InputError(f"no variants; variants: {', '.join(VARIANTS)}", "--variants")
  if not seeds:
    raise InputError("no seeds", "--seeds")
  exp = cfg.experiment
  if exp.oracle and cfg.data.source != "sandbox":
    raise InputError(f"the oracle evaluation of variants {', '.join(variants)} needs the sandbox world "
                     f"(config.data.source='sandbox'); got {cfg.data.source!r} (set "
                     "config.experiment.oracle=False for real data)", "config.experiment.oracle")
  if int(exp.ensemble_size) < 1:
    raise InputError(f"a simulator ensemble of size {exp.ensemble_size}: it needs at least 1 simulator "
                     "(the search's own; more are held out)", "config.experiment.ensemble_size")
  if "best_of_n" in variants and int(exp.best_of_n) < 1:
    raise InputError(f"best_of_n needs at least 1 candidate per turn; got {exp.best_of_n}",
                     "config.experiment.best_of_n")
  if "transfer" in variants:
    source = str(exp.get("transfer_from", "") or "")
    if not source:
      raise InputError("the transfer variant needs config.experiment.transfer_from: the other task's "
                       "experiment directory (its variant future run for the same seeds)",
                       "config.experiment.transfer_from")
    with open(transfer_pairs(source, seeds[0])[0]) as f:
      first = f.readline()
    task = json.loads(first).get("meta", {}).get("task") if first.strip() else None
    if task == cfg.task:
      raise InputError(f"transfer: {source} holds {task} pairs, the task of this experiment; "
                       "transfer_from must be the other task's experiment", "config.experiment.transfer_from")
    missing = [s for s in seeds if not transfer_pairs(source, s)]
    if missing:
      raise InputError(f"transfer: {source} has no future-search pairs for seed(s) "
                       f"{', '.join(map(str, missing))} (run the other task's experiment with "
                       f"--variants=future --seeds={','.join(map(str, missing))} first)",
                       "config.experiment.transfer_from")
