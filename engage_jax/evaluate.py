"""Engagement evaluation: simulated conversations on held-out conditions, and their statistics.

The driver `evaluate` runs the agent against the user simulator on every held-out condition
`samples_per_condition` times with *deterministic* seeds, so two agents (SFT and DPO) evaluated
with the same config and seed see exactly the same conditions, opening turns and simulator seeds.
That makes the comparison *paired*: `paired_test` compares the two agents condition by condition.

Statistics (numpy only, vectorised):

* `bootstrap_ci(values)`: percentile bootstrap interval of the mean.
* `paired_test(a, b)`: paired sign-flip permutation test on per-condition differences `b - a`
  (exact over all 2^n sign patterns when n <= `EXACT_MAX_N`, otherwise >= 20,000 random sign
  patterns). `alternative="two-sided"` (the default, and what report.json's `p_value` is),
  `"greater"` (H1: mean(b) > mean(a), i.e. DPO > SFT) or `"less"`.
* `mcnemar_exact(a, b)`: exact McNemar test for paired binary outcomes (ES engagement).
* `summarize(dialogues)`: the report's per-model block `{"n", "reward_mean", "ci95", "mean_turns"}`.
* Unparsed P4G outcomes (`outcome["donation"] is None`: `rewards.parse_donation` found no
  donation) are never counted as $0: every statistic leaves them out, `unparsed_count` counts them.
* `paired_rewards(sft, dpo)`: per-condition mean rewards of two runs matched by condition id.
* P4G with reward.readout "expected": `outcome["reward"]` is the expected readout and
  `sampled_view(dialogues)` the sampled, parsed outcome beside it (the paper's metric).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any
from collections.abc import Callable, Mapping, Sequence
import inspect

import numpy as np

from engage_jax.data.dialogue import Dialogue
from engage_jax.fields import Int, field
from engage_jax.fileio import atomic_write_jsonl
from engage_jax.seeding import sample_seed  # evaluate.sample_seed: the seed of one simulate call
from engage_jax.seeding import sub_seed

EXACT_MAX_N = 16          # exact enumeration of 2^n sign patterns up to this many pairs
DEFAULT_PERMUTATIONS = 20_000
ALTERNATIVES = ("two-sided", "greater", "less")
_CHUNK_ELEMS = 4_000_000  # elements per vectorised chunk (bounds memory: ~32 MB of float64)
_TIE_EPS = 1e-12


# ----------------------------------------------------------------------------- statistics
def _as_1d(values, name: str) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name}: contains NaN or inf")
  return arr


def bootstrap_ci(values: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `values` [n].

  Draws `n_boot` resamples of size n with replacement (index matrix [chunk, n], vectorised in
  chunks) and returns the (1-level)/2 and (1+level)/2 quantiles of the resampled means.
  n == 1 (or all values equal) gives the degenerate interval (x, x).
  """
  x = _as_1d(values, "bootstrap_ci values")
  n = x.size
  if n == 0:
    raise ValueError("bootstrap_ci: no values")
  if not 0.0 < level < 1.0:
    raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
  if n_boot < 1:
    raise ValueError(f"bootstrap_ci: n_boot must be positive, got {n_boot}")
  if n == 1 or np.all(x == x[0]):
    return float(x[0]), float(x[0])
  rng = np.random.default_rng(seed)
  chunk = max(1, _CHUNK_ELEMS // n)
  means = np.empty(n_boot, np.float64)
  for start in range(0, n_boot, chunk):
    m = min(chunk, n_boot - start)
    idx = rng.integers(0, n, size=(m, n))
    means[start:start + m] = x[idx].mean(axis=1)
  alpha = (1.0 - level) / 2.0
  lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
  return float(lo), float(hi)


def _sign_patterns_exact(n: int) -> np.ndarray:
  """All 2^n sign patterns [2^n, n] of ±1 (row 0 = all +1, the observed assignment)."""
  bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
  return 1.0 - 2.0 * bits


def paired_test(a: Sequence[float], b: Sequence[float], seed: int = 0,
                alternative: str = "two-sided", n_permutations: int = DEFAULT_PERMUTATIONS) -> float:
  """Paired sign-flip permutation test of mean(b - a) = 0; returns the p-value.

  a, b: [n] paired values (e.g. per-condition mean reward of SFT and DPO on the same conditions
  and seeds). Statistic T = mean(d), d = b - a. Under H0 the sign of each d_i is exchangeable.
  n <= EXACT_MAX_N: exact p over all 2^n patterns. Otherwise `n_permutations` random patterns
  (>= 20,000 advised) with the +1 correction, p = (1 + #{T* ≥ T}) / (1 + n_permutations).
  alternative: "two-sided" (|T*| >= |T|), "greater" (H1: b > a, T* >= T), "less" (T* <= T).
  All-zero differences give p = 1.
  """
  if alternative not in ALTERNATIVES:
    raise ValueError(f"paired_test: alternative must be one of {ALTERNATIVES}, got {alternative!r}")
  x, y = _as_1d(a, "paired_test a"), _as_1d(b, "paired_test b")
  if x.size != y.size:
    raise ValueError(f"paired_test: a and b must be paired (same length), got {x.size} and {y.size}")
  if x.size == 0:
    raise ValueError("paired_test: no pairs")
  d = y - x
  n = d.size
  if np.all(d == 0):
    return 1.0

  def exceed(signs: np.ndarray) -> int:
    t = signs @ d / n
    obs = d.mean()
    if alternative == "two-sided":
      return int(np.sum(np.abs(t) >= abs(obs) - _TIE_EPS))
    if alternative == "greater":
      return int(np.sum(t >= obs - _TIE_EPS))
    return int(np.sum(t <= obs + _TIE_EPS))

  if n <= EXACT_MAX_N:
    signs = _sign_patterns_exact(n)
    return exceed(signs) / signs.shape[0]
  if n_permutations < 1:
    raise ValueError(f"paired_test: n_permutations must be positive, got {n_permutations}")
  rng = np.random.default_rng(seed)
  chunk = max(1, _CHUNK_ELEMS // n)
  count = 0
  for start in range(0, n_permutations, chunk):
    m = min(chunk, n_permutations - start)
    signs = 1.0 - 2.0 * rng.integers(0, 2, size=(m, n))
    count += exceed(signs)
  return (1 + count) / (1 + n_permutations)


def mcnemar_exact(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
  """Exact McNemar test for paired binary outcomes a, b [n] in {0, 1}; returns the p-value.

  Uses only the discordant pairs: n01 (a=0, b=1) ~ Binomial(n01 + n10, 1/2) under H0.
  "greater" is H1: b succeeds more often than a. No discordant pairs → p = 1.
  """
  if alternative not in ALTERNATIVES:
    raise ValueError(f"mcnemar_exact: alternative must be one of {ALTERNATIVES}, got {alternative!r}")
  x, y = _as_1d(a, "mcnemar_exact a"), _as_1d(b, "mcnemar_exact b")
  if x.size != y.size:
    raise ValueError(f"mcnemar_exact: a and b must be paired (same length), got {x.size} and {y.size}")
  if not (np.all(np.isin(x, (0.0, 1.0))) and np.all(np.isin(y, (0.0, 1.0)))):
    raise ValueError("mcnemar_exact: values must be binary (0/1)")
  n01 = int(np.sum((x == 0) & (y == 1)))
  n10 = int(np.sum((x == 1) & (y == 0)))
  m = n01 + n10
  if m == 0:
    return 1.0
  pmf = np.array([math.comb(m, k) for k in range(m + 1)], np.float64) / 2.0 ** m
  upper = float(pmf[n01:].sum())   # P(K >= n01)
  lower = float(pmf[:n01 + 1].sum())  # P(K <= n01)
  if alternative == "greater":
    return min(1.0, upper)
  if alternative == "less":
    return min(1.0, lower)
  return min(1.0, 2.0 * min(upper, lower))


# ----------------------------------------------------------------------------- dialogues
def is_unparsed(d: Dialogue) -> bool:
  """A P4G dialogue whose outcome answer gave no donation (rollout sets outcome["donation"] None)."""
  return d.task == "p4g" and "donation" in d.outcome and d.outcome["donation"] is None


def _reward(d: Dialogue) -> float | None:
  """outcome["reward"], or None for an unparsed P4G outcome (counted apart, never as $0)."""
  if "reward" not in d.outcome:
    raise ValueError(f"dialogue {d.id!r}: outcome has no 'reward' (not a simulated dialogue?)")
  return None if is_unparsed(d) else float(d.outcome["reward"])


def _turns(d: Dialogue) -> float:
  return float(d.outcome.get("num_turns", d.num_agent_turns))


def scored(dialogues: Sequence[Dialogue]) -> list[Dialogue]:
  """The dialogues with a reward (unparsed P4G outcomes left out)."""
  return [d for d in dialogues if _reward(d) is not None]


def unparsed_count(dialogues: Sequence[Dialogue]) -> int:
  """How many dialogues have an unparsed P4G outcome."""
  return sum(is_unparsed(d) for d in dialogues)


def rewards(dialogues: Sequence[Dialogue]) -> np.ndarray:
  """outcome["reward"] of each scored dialogue (unparsed P4G outcomes left out) → [n] float64."""
  return np.asarray([_reward(d) for d in scored(dialogues)], np.float64)


def summarize(dialogues: Sequence[Dialogue], n_boot: int = 10_000, seed: int = 0) -> dict:
  """{"n", "reward_mean", "ci95": [lo, hi], "mean_turns"} of simulated dialogues.

  Over the scored dialogues only (`unparsed_count` of P4G outcomes are reported apart):
  n: how many; reward_mean: mean of outcome["reward"] (ES engagement rate / P4G mean donation);
  ci95: percentile bootstrap of the mean; mean_turns: mean of outcome["num_turns"]
  (agent turns; falls back to counting agent turns when absent).
  """
  if not dialogues:
    raise ValueError("summarize: no dialogues")
  kept = scored(dialogues)
  if not kept:
    raise ValueError(f"summarize: all {len(dialogues)} P4G outcomes are unparsed; no donation to "
                     "report (see rewards.parse_donation)")
  r = rewards(kept)
  lo, hi = bootstrap_ci(r, n_boot=n_boot, seed=seed, level=0.95)
  return {"n": int(r.size), "reward_mean": float(r.mean()), "ci95": [lo, hi],
          "mean_turns": float(np.mean([_turns(d) for d in kept]))}


def condition_id(d: Dialogue) -> str:
  """The held-out condition a simulated dialogue came from (set by `evaluate`)."""
  return str(d.outcome.get("condition_id", d.id))


def paired_rewards(sft: Sequence[Dialogue], dpo: Sequence[Dialogue]
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Per-condition mean rewards of two runs on the same conditions.

  Returns (sft_means [c], dpo_means [c], condition ids [c]) over the conditions present in both
  (in first-seen order of `sft`); unparsed P4G outcomes are left out, so a condition counts
  when both runs scored it at least once. Raises ValueError if the runs share no condition.
  """
  def group(ds):
    g: dict[str, list[float]] = collections.OrderedDict()
    for d in scored(ds):
      g.setdefault(condition_id(d), []).append(_reward(d))
    return g

  ga, gb = group(sft), group(dpo)
  ids = [c for c in ga if c in gb]
  if not ids:
    raise ValueError("paired_rewards: SFT and DPO dialogues share no condition id; were they "
                     "evaluated on the same held-out conditions?")
  return (np.asarray([np.mean(ga[c]) for c in ids]), np.asarray([np.mean(gb[c]) for c in ids]), ids)


def has_sampled_readout(dialogues: Sequence[Dialogue]) -> bool:
  """True when the dialogues carry the sampled P4G outcome beside the expected one (reward.readout
  "expected": evaluation reads out "both", engage_jax/readout.py)."""
  return any("sampled_donation" in d.outcome for d in dialogues)


def sampled_view(dialogues: Sequence[Dialogue]) -> list[Dialogue]:
  """Copies whose reward is the sampled, parsed outcome (`outcome["sampled_donation"]`; None =
  unparsed, left out as always): the paper's metric, for `summarize` / `paired_rewards`."""
  return [dataclasses.replace(d, outcome=dict(d.outcome, reward=d.outcome.get("sampled_donation") or 0.0,
                                              donation=d.outcome.get("sampled_donation")))
          for d in dialogues]


def paired_samples(sft: Sequence[Dialogue], dpo: Sequence[Dialogue]) -> tuple[np.ndarray, np.ndarray]:
  """Rewards of dialogues matched one-to-one by id (same condition and sample seed) → ([m], [m]);
  pairs where either outcome is unparsed are left out."""
  by_id = {d.id: d for d in scored(dpo)}
  common = [d for d in scored(sft) if d.id in by_id]
  return (np.asarray([_reward(d) for d in common]), np.asarray([_reward(by_id[d.id]) for d in common]))


# ----------------------------------------------------------------------------- driver
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What `evaluate` reads from its config (attribute or mapping access; `cfg.eval` if present);
  the defaults are config.eval's (engage_jax/schema.py `EvalConfig` adds the pipeline's keys).

  task: "es" | "p4g" (config.task); reward: the reward config passed through to `simulate`
  (config.reward).
  """
  task: str = field("es", "es | p4g (the pipeline's config.task)", key=False)
  max_agent_turns: int = field(4, "turn cap per conversation", Int(1))
  samples_per_condition: int = field(2, "chats per held-out condition (different seeds, the same for every "
                                        "agent)", Int(1))
  batch_size: int = field(256, "chats in flight (0: all at once); a finished chat's row is refilled",
                          Int(0, " (0: all conditions in one call)"))
  reward: Any = field(None, "the reward settings (the pipeline's config.reward)", key=False)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  try:
    return getattr(cfg, name)
  except (AttributeError, KeyError):
    return default


def eval_settings(cfg: Any) -> EvalSettings:
  """Reads EvalSettings from a full config (`cfg.eval`, `cfg.task`, `cfg.reward`) or a flat one;
  a missing key takes EvalSettings' default."""
  sub = _get(cfg, "eval", None)
  src = [s for s in (sub, cfg) if s is not None]
  defaults = {f.name: f.default for f in dataclasses.fields(EvalSettings)}

  def find(name):
    for s in src:
      v = _get(s, name, None)
      if v is not None:
        return v
    return defaults[name]

  task = _get(cfg, "task", None)
  if task not in ("es", "p4g"):
    raise ValueError(f"evaluate: config task must be 'es' or 'p4g', got {task!r}")
  spc, bs = int(find("samples_per_condition")), int(find("batch_size"))
  if spc < 1:
    raise ValueError(f"evaluate: samples_per_condition must be >= 1, got {spc}")
  if bs < 0:
    raise ValueError(f"evaluate: batch_size must be >= 0, got {bs}")
  return EvalSettings(task=task, max_agent_turns=int(find("max_agent_turns")), samples_per_condition=spc,
                      batch_size=bs, reward=find("reward"))


def chat_seed(seed: int, sample: int, index: int) -> int:
  """The seed of one evaluated chat: sample `sample` of condition number `index` (32-bit)."""
  return sub_seed(seed, 1, sample, index, bits=32)


def _default_simulate() -> Callable:
  from engage_jax import rollout  # noqa: PLC0415 (lazy: evaluate's statistics need no model code)
  return rollout.simulate


def evaluate(agent_speaker, simulator_speaker, conditions: Sequence[Dialogue], cfg: Any, seed: int,
             *, out_path: str | None = None, simulate_fn: Callable | None = None,
             n_boot: int = 10_000) -> tuple[dict, list[Dialogue]]:
  """Simulates conversations of `agent_speaker` with `simulator_speaker` on held-out conditions.

  conditions: [C] Dialogues holding the condition and the opening turn(s) (the start of each
  conversation). Every condition is played `samples_per_condition` (= S) times. With a simulate
  that takes `row_seeds` and `max_rows` (`rollout.simulate`), all C * S chats run in ONE call,
  `batch_size` in flight (a finished chat's row goes to the next waiting one), chat (k, i) seeded
  by `chat_seed(seed, k, i)`, so its text does not depend on batch_size or on the other chats.
  Otherwise call (k, j) — sample k, chunk j of `batch_size` conditions — gets seed
  `sample_seed(seed, k, j)`. Either way the same cfg and seed give every agent the same
  conditions and simulator seeds (outcome["seed"]: the chat's or the call's). Returned dialogues
  [C * S], ordered sample-major, have id "<condition id>/s<k>" and outcome["condition_id"],
  outcome["sample"], outcome["seed"] added (for pairing, see `paired_rewards`).
  out_path: if given, the dialogues are written there as JSON lines (atomically).
  simulate_fn: defaults to `engage_jax.rollout.simulate` (tests pass a fake).
  Returns (summarize(dialogues), dialogues).
  """
  if not conditions:
    raise ValueError("evaluate: no held-out conditions")
  st = eval_settings(cfg)
  ids = [c.id for c in conditions]
  dup = [i for i, n in collections.Counter(ids).items() if n > 1]
  if dup:
    raise ValueError(f"evaluate: duplicate condition ids {dup[:5]}; pairing SFT vs DPO needs unique ids")
  for c in conditions:
    if c.task != st.task:
      raise ValueError(f"evaluate: condition {c.id!r} has task {c.task!r}, config task is {st.task!r}")
  simulate = simulate_fn if simulate_fn is not None else _default_simulate()
  params = inspect.signature(simulate).parameters
  extra = {"progress": True} if "progress" in params else {}
  bs = st.batch_size or len(conditions)
  # per simulate call: ([(sample k, condition)], the call's seed or None, per-chat seeds or None)
  if "row_seeds" in params and "max_rows" in params:
    plan = [([(k, c) for k in range(st.samples_per_condition) for c in conditions], None,
             [chat_seed(seed, k, i) for k in range(st.samples_per_condition) for i in range(len(conditions))])]
    extra["max_rows"] = st.batch_size
  else:
    plan = [([(k, c) for c in conditions[start:start + bs]], sample_seed(seed, k, j), None)
            for k in range(st.samples_per_condition) for j, start in enumerate(range(0, len(conditions), bs))]
  out: list[Dialogue] = []
  for chats, s, seeds in plan:
    starts = [Dialogue(id=f"{c.id}/s{k}", task=c.task, turns=list(c.turns), condition=dict(c.condition),
                       outcome={}) for k, c in chats]
    per_row = {} if seeds is None else {"row_seeds": seeds}
    got = simulate(agent_speaker, simulator_speaker, starts, task=st.task, max_agent_turns=st.max_agent_turns,
                   reward_cfg=st.reward, seed=seed if s is None else s, **per_row, **extra)
    got = list(got)
    if len(got) != len(starts):
      raise ValueError(f"evaluate: simulate returned {len(got)} dialogues for {len(starts)} starts")
    for r, ((k, c), st_d, d) in enumerate(zip(chats, starts, got)):
      if "reward" not in d.outcome:
        raise ValueError(f"evaluate: simulated dialogue {d.id!r} has no outcome['reward']")
      d.id = st_d.id
      d.outcome = dict(d.outcome, condition_id=c.id, sample=k, seed=s if seeds is None else seeds[r])
      out.append(d)
  if out_path:
    atomic_write_jsonl(out_path, [d.to_json() for d in out])
  return summarize(out, n_boot=n_boot, seed=seed), out


def load_dialogues(path: str) -> list[Dialogue]:
  """Reads a dialogues.jsonl written by `evaluate`."""
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(Dialogue.from_json(json.loads(line)))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{i}: bad dialogue record: {e}") from e
  return out


__all__ = ["ALTERNATIVES", "EXACT_MAX_N", "EvalSettings", "bootstrap_ci", "chat_seed", "condition_id", "eval_settings",
           "evaluate", "has_sampled_readout", "is_unparsed", "load_dialogues", "mcnemar_exact", "paired_rewards", "paired_samples", "paired_test",
           "rewards", "sample_seed", "sampled_view", "scored", "summarize", "unparsed_count"]
