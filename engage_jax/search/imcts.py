"""i×MCTS over simulated conversations: select → expand → rollout → backup, a batch of trees.

One tree per user condition. Each round:
  1. select: in every live tree, descend from the root by UCT (or PUCT with the agent's sequence
     log-prob prior, softmax over siblings) through open children to an unexpanded leaf;
  2. expand: ALL selected leaves of all trees form one frontier → ONE `env.expand` call
     (k candidates each); near-duplicate siblings are dropped (`prune_similarity`);
  3. rollout: ONE `env.rollout` call over all new children without a known reward (terminal
     children whose reward came with the expansion skip it);
  4. backup: every new child's reward is added (visits += 1, value_sum += r) to the child and
     every ancestor, so a node's value is the mean of all rollout rewards below it; an unparsed
     P4G outcome (reward NaN, `base.UNPARSED`) adds nothing and is counted in RoundInfo.unparsed;
  5. optional cap on live (still expandable) leaves per tree (`max_live`): the lowest-valued are
     closed.
A tree is live while it has used fewer than `budget` expansions and still has an expandable node.
Terminal (the simulator ended the chat) and truncated (turn cap) nodes are never expanded; nor are
nodes at `max_depth`.

This module owns the algorithm's settings (`SearchConfig`, checked by `validate`) and the round
loop (`search`); the selection rules are in search/selection.py, sibling pruning in
search/similarity.py, the tree arrays in search/tree.py, the env boundary in search/base.py.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from engage_jax.fields import Bool, Int, Num, OneOf, Optional, field
from engage_jax.data.dialogue import AGENT, REQUIRED_CONDITION, Dialogue
from engage_jax.sampling import SamplingParams
from engage_jax.seeding import sub_seed
from engage_jax.search.base import Env, Expansion
from engage_jax.search.selection import SELECTION_RULES, select_leaf
from engage_jax.search.similarity import SIMILARITIES, prune_duplicates
from engage_jax.search.tree import ROOT_INDEX, UNVISITED, Trees, init_trees

REWARD_HORIZONS = ("future", "turn")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Every constant of i×MCTS (the paper gives few; GDP-Zero uses PUCT, c=1, 15-turn cap).

  Tree:
    k: candidates generated per expanded leaf (K, max children).
    budget: expansions per tree (node capacity N = 1 + budget * k).
    max_depth: search steps below the root that may still be expanded (nodes at this depth are
      leaves whose value comes from rollouts only).
    max_turns: cap on agent turns in the whole conversation (root turns included); a child that
      reaches it is `truncated`. ModelEnv rollouts use the same cap.
  Selection (search/selection.py, SELECTION_RULES):
    selection: "uct" (Q + c sqrt(ln N_parent / N_child)) or "puct"
      (Q + c P sqrt(N_parent) / (1 + N_child), P = softmax(prior / prior_temperature) over siblings).
    c: exploration constant.
    q_normalize: min-max normalise Q over the tree's visited nodes (mctx-style) before scoring.
  Pruning (search/similarity.py):
    prune_similarity: drop a candidate whose agent text is at least this similar to an earlier
      sibling (None: keep all); similarity: "difflib" (SequenceMatcher ratio) or "jaccard"
      (word sets, punctuation ignored).
    max_live: cap on live (expandable) leaves per tree; 0 = no cap.
  Pairs:
    margin: children whose mean values differ by at least this give (chosen, rejected).
    pair_min_visits: both children need at least this many visits.
  Sampling (`sampling.SamplingParams`, used by ModelEnv.from_config):
    agent_sampling: the agent's candidates; simulator_sampling: the simulator's replies (empty
      stop_token_ids: the tokenizer's end-of-turn / eos ids, see rollout.Speaker).
  Reward horizon:
    reward_horizon: "future" (a child's reward is the end-of-chat outcome of a rollout, or of the
      chat its reply ends) or "turn" (the user's immediate reaction to that agent turn:
      `env.turn_rewards`, e.g. the ES regex on the next user turn alone; no rollouts). The backup
      is unchanged, so a node's value is still the mean of the rewards in its subtree: later
      turns' immediate reactions reach an earlier turn's value.
  seed: all randomness derives from it (each row of an env call gets `node_seed(seed, tree, node,
    use)`, independent of the round and of the other trees in the call).
  required_condition: condition fields every root needs; None = the task's
    (`data.dialogue.REQUIRED_CONDITION`).
  """
  k: int = field(3, "candidates generated per expanded leaf", Int(2, " (pairs need siblings)"))
  budget: int = field(8, "expansions per tree", Int(1))
  max_depth: int = field(3, "search steps below the root that may still be expanded", Int(1))
  max_turns: int = field(4, "cap on agent turns in a conversation (root turns included)", Int(1))
  selection: str = field("uct", "uct | puct (search/selection.py)", OneOf(SELECTION_RULES))
  c: float = field(1.0, "exploration constant", Num(0.0))
  prior_temperature: float = field(1.0, "puct: softmax temperature of the siblings' prior", Num(0.0, lo_open=True))
  q_normalize: bool = field(True, "min-max normalise Q over the tree's visited nodes before scoring", Bool())
  prune_similarity: float | None = field(0.95, "drop a candidate at least this similar to an earlier sibling "
                                               "(None: keep all)", Optional(Num(0.0, 1.0, lo_open=True)))
  similarity: str = field("difflib", "difflib | jaccard (search/similarity.py)", OneOf(SIMILARITIES))
  max_live: int = field(0, "cap on live (expandable) leaves per tree (0: no cap)", Int(0, " (0: no cap)"))
  margin: float = field(0.2, "children whose mean values differ by at least this give a pair", Num(0.0))
  pair_min_visits: int = field(1, "visits both children of a pair need", Int(1))
  agent_sampling: SamplingParams = field(
      doc="the agent's candidates", factory=lambda: SamplingParams(max_new_tokens=32, temperature=0.9, top_p=0.9))
  # the simulator samples the user's reactions at T=1 so that their learned probabilities are
  # kept (T<1 sharpens them away)
  simulator_sampling: SamplingParams = field(
      doc="the simulator's replies", factory=lambda: SamplingParams(max_new_tokens=32, temperature=1.0))
  reward_horizon: str = field("future", "future: the end-of-chat outcome (rollouts); turn: the next user turn only",
                              OneOf(REWARD_HORIZONS))
  seed: int = field(0, "all randomness derives from it (the pipeline's config.seed)", key=False)
  required_condition: tuple[str, ...] | None = field(None, "condition fields every root needs (None: the task's)",
                                                     key=False)

  def __post_init__(self):
    if self.reward_horizon not in REWARD_HORIZONS:
      raise ValueError(f"SearchConfig.reward_horizon must be one of {REWARD_HORIZONS}; "
                       f"got {self.reward_horizon!r}")

  @classmethod
  def from_dict(cls, d: Mapping, **overrides) -> SearchConfig:
    """From a mapping / ml_collections ConfigDict whose keys are SearchConfig fields; the two
    sampling fields may be mappings of SamplingParams fields. An unknown key is a ValueError
    (the launcher's `config.search` section: `search.run.config_from_section`)."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    d.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if k not in names)
    if unknown:
      raise ValueError(f"SearchConfig: unknown keys {unknown}; known: {sorted(names)}")
    if d.get("required_condition") is not None:
      d["required_condition"] = tuple(d["required_condition"])
    for k in ("agent_sampling", "simulator_sampling"):
      if isinstance(d.get(k), Mapping):
        d[k] = _sampling_params(d[k], k)
    return cls(**d)


def _sampling_params(d: Mapping, where: str) -> SamplingParams:
  names = {f.name for f in dataclasses.fields(SamplingParams)}
  unknown = sorted(k for k in d if k not in names)
  if unknown:
    raise ValueError(f"SearchConfig.{where}: unknown keys {unknown}; known: {sorted(names)}")
  d = dict(d)
  if "stop_token_ids" in d:
    d["stop_token_ids"] = tuple(d["stop_token_ids"])
  return SamplingParams(**d)


def validate(roots: Sequence[Dialogue], cfg: SearchConfig, env: Env | None = None) -> None:
  """Raises ValueError on a bad config or root (before any model call)."""
  if cfg.budget < 1:
    raise ValueError(f"SearchConfig.budget must be >= 1 expansion per tree; got {cfg.budget}")
  if cfg.k < 2:
    raise ValueError(f"SearchConfig.k must be >= 2 candidates per leaf (pairs need siblings); "
                     f"got {cfg.k}")
  if cfg.max_depth < 1:
    raise ValueError(f"SearchConfig.max_depth must be >= 1; got {cfg.max_depth}")
  if cfg.max_turns < 1:
    raise ValueError(f"SearchConfig.max_turns must be >= 1; got {cfg.max_turns}")
  if cfg.selection not in SELECTION_RULES:
    raise ValueError(f"SearchConfig.selection must be one of {', '.join(map(repr, SELECTION_RULES))}; "
                     f"got {cfg.selection!r}")
  if cfg.c < 0 or cfg.prior_temperature <= 0:
    raise ValueError(f"SearchConfig: need c >= 0 and prior_temperature > 0; got c={cfg.c}, "
                     f"prior_temperature={cfg.prior_temperature}")
  if cfg.prune_similarity is not None and not 0.0 < cfg.prune_similarity <= 1.0:
    raise ValueError(f"SearchConfig.prune_similarity must be in (0, 1] or None; "
                     f"got {cfg.prune_similarity}")
  if cfg.similarity not in SIMILARITIES:
    raise ValueError(f"SearchConfig.similarity must be one of {', '.join(map(repr, SIMILARITIES))}; "
                     f"got {cfg.similarity!r}")
  if cfg.max_live < 0 or cfg.margin < 0 or cfg.pair_min_visits < 1:
    raise ValueError(f"SearchConfig: need max_live >= 0, margin >= 0, pair_min_visits >= 1; got "
                     f"{cfg.max_live}, {cfg.margin}, {cfg.pair_min_visits}")
  env_turns = getattr(env, "max_turns", None) if env is not None else None
  if env_turns is not None and env_turns != cfg.max_turns:
    raise ValueError(f"env.max_turns={env_turns} differs from SearchConfig.max_turns="
                     f"{cfg.max_turns}; rollouts and truncation must use the same cap")
  if not roots:
    raise ValueError("search: no roots")
  for r in roots:
    if not isinstance(r, Dialogue):
      raise ValueError(f"search: root {r!r} is not a Dialogue")
    need = cfg.required_condition
    if need is None:
      need = REQUIRED_CONDITION.get(r.task, ())
    missing = [f for f in need if not str(r.condition.get(f, "")).strip()]
    if missing:
      raise ValueError(f"root {r.id!r} ({r.task}): condition lacks {missing}; "
                       f"has {sorted(r.condition)}")
    if not r.condition:
      raise ValueError(f"root {r.id!r} ({r.task}): empty condition; the simulator needs one")
    if r.turns and r.turns[-1].role == AGENT:
      raise ValueError(f"root {r.id!r}: last turn is the agent's; a root must end with the user's "
                       f"turn (or be empty) so that the agent speaks next")
    if r.num_agent_turns >= cfg.max_turns:
      raise ValueError(f"root {r.id!r}: already has {r.num_agent_turns} agent turns >= "
                       f"max_turns={cfg.max_turns}")
  if cfg.reward_horizon == "turn" and env is not None and not hasattr(env, "turn_rewards"):
    raise ValueError(f"SearchConfig.reward_horizon='turn' needs an env with turn_rewards; "
                     f"{type(env).__name__} has none")


def update_closed(trees: Trees, max_depth: int) -> None:
  """Recomputes `trees.closed` [B, N] bottom-up (children always have larger indices)."""
  n_cap = trees.capacity
  used = np.arange(n_cap)[None, :] < trees.num_nodes[:, None]
  self_closed = (trees.terminal | trees.truncated | trees.capped | (trees.depth >= max_depth)
                 | ~used)
  closed = trees.closed
  rows = np.arange(trees.batch_size)[:, None]
  for n in range(n_cap - 1, -1, -1):
    kids = trees.children[:, n, :]  # [B, K]
    kid_closed = np.where(kids == UNVISITED, True, closed[rows, np.maximum(kids, 0)])
    closed[:, n] = self_closed[:, n] | (trees.expanded[:, n] & kid_closed.all(axis=1))


def _cap_live(trees: Trees, b: int, max_live: int, max_depth: int) -> None:
  """Closes the lowest-valued expandable leaves of tree b beyond `max_live` (ties: later first)."""
  n = int(trees.num_nodes[b])
  live = [i for i in range(n) if not trees.expanded[b, i] and not trees.terminal[b, i]
          and not trees.truncated[b, i] and not trees.capped[b, i] and trees.depth[b, i] < max_depth]
  if len(live) <= max_live:
    return
  visits = trees.visits[b]  # row b only: the search may hold every tree of a run
  with np.errstate(invalid="ignore", divide="ignore"):
    value = np.where(visits > 0, trees.value_sum[b] / np.maximum(visits, 1), np.nan)
  live.sort(key=lambda i: (-value[i], i))
  for i in live[max_live:]:
    trees.capped[b, i] = True


@dataclasses.dataclass
class RoundInfo:
  """What one round did (passed to `search`'s on_round callback)."""
  round: int
  expansions: int  # leaves expanded this round (= live trees)
  children: int    # children added
  rollouts: int    # histories sent to env.rollout
  unparsed: int = 0  # new children whose outcome gave no reward (not backed up)
  finished: list[int] = dataclasses.field(default_factory=list)  # trees (indices) done this round


EXPAND, ROLLOUT = 0, 1  # the `use` key of node_seed


def node_seed(seed: int, tree_id: int, node: int, use: int) -> int:
  """The env seed of one row: the expansion of `node` (use EXPAND) or the rollout from it (use
  ROLLOUT) in tree `tree_id`. It depends on nothing else (not the round, nor which trees share
  the call), so a tree's search is the same however trees are packed into calls."""
  return sub_seed(seed, 2, tree_id, node, use)


def tree_done(trees: Trees, b: int, budget: int) -> bool:
  """Tree b has used its budget or has no expandable node left."""
  return bool(trees.expansions[b] >= budget or trees.closed[b, ROOT_INDEX])


def search(env: Env, roots: Sequence[Dialogue], cfg: SearchConfig,
           on_round: Callable[[RoundInfo], None] | None = None, *,
           tree_ids: Sequence[int] | None = None, in_flight: int = 0,
           on_finished: Callable[[Trees, list[int]], None] | None = None) -> Trees:
  """Runs i×MCTS on one tree per root (B = len(roots)); returns the filled `Trees`.

  Per round: one `env.expand` call over the frontier of the trees in flight and at most one
  `env.rollout` call. in_flight: at most this many trees in flight (0 = all B): the first
  `in_flight` unfinished trees in root order, so a tree that finishes is replaced at once by the
  next waiting one (the calls stay full while trees wait). Every row's env seed is
  `node_seed(cfg.seed, tree_ids[b], node, ...)` (tree_ids default 0..B-1): the trees, and so the
  pairs, do not depend on in_flight or on which trees share a call (given an env whose rows
  depend only on their own seed, as ModelEnv's and BanditEnv's do). Deterministic given cfg.seed
  (if the env is).
  on_finished(trees, [b, ...]): after each round, the trees that finished in it (done, as
  `tree_done`), e.g. to write them out while the others go on.
  Raises ValueError on bad config/roots before calling the env.
  """
  validate(roots, cfg, env)
  if in_flight < 0:
    raise ValueError(f"search: in_flight must be >= 0 (0 = all trees), got {in_flight}")
  tree_ids = list(range(len(roots))) if tree_ids is None else [int(t) for t in tree_ids]
  if len(tree_ids) != len(roots):
    raise ValueError(f"search: {len(tree_ids)} tree_ids for {len(roots)} roots")
  k = cfg.k
  trees = init_trees(roots, 1 + cfg.budget * k, k)
  root_turns = [r.num_agent_turns for r in roots]
  update_closed(trees, cfg.max_depth)
  limit = in_flight or trees.batch_size
  reported = np.zeros((trees.batch_size,), bool)
  rnd = 0
  while True:
    live = []
    for b in range(trees.batch_size):
      if len(live) >= limit:
        break
      if not tree_done(trees, b, cfg.budget):
        live.append(b)
    if not live:
      break
    leaves = [(b, select_leaf(trees, b, cfg)) for b in live]
    histories = [trees.history(b, n) for b, n in leaves]
    expansions = env.expand(histories, k, [node_seed(cfg.seed, tree_ids[b], n, EXPAND) for b, n in leaves])
    if len(expansions) != len(leaves):
      raise ValueError(f"env.expand returned {len(expansions)} rows for {len(leaves)} histories")
    new: list[tuple[int, int]] = []
    new_exp: list[Expansion] = []
    known: set[tuple[int, int]] = set()  # terminal children scored by the expansion
    for (b, leaf), cands in zip(leaves, expansions):
      if len(cands) != k:
        raise ValueError(f"env.expand returned {len(cands)} candidates; expected k={k}")
      kept = prune_duplicates(cands, cfg.prune_similarity, cfg.similarity)
      turns_after = root_turns[b] + int(trees.depth[b, leaf]) + 1
      ids = trees.add_children(
          b, leaf, [e.agent for e in kept], [e.user for e in kept],
          priors=[e.agent_logprob for e in kept], terminal=[e.terminal for e in kept],
          truncated=[turns_after >= cfg.max_turns for _ in kept],
          agent_ids=[e.agent_ids for e in kept], user_ids=[e.user_ids for e in kept])
      for node, e in zip(ids, kept):
        if e.terminal and e.reward is not None:
          trees.reward[b, node] = float(e.reward)
          known.add((b, node))
        new.append((b, node))
        new_exp.append(e)
    if cfg.reward_horizon == "turn":  # the immediate reaction, no rollout
      for (b, n), r in zip(new, env.turn_rewards(new_exp)):
        trees.reward[b, n] = float(r)
      known = set(new)
    need = [(b, n) for b, n in new if (b, n) not in known]
    if need:
      results = env.rollout([trees.history(b, n) for b, n in need],
                            [node_seed(cfg.seed, tree_ids[b], n, ROLLOUT) for b, n in need])
      if len(results) != len(need):
        raise ValueError(f"env.rollout returned {len(results)} results for {len(need)} histories")
      for (b, n), res in zip(need, results):
        trees.reward[b, n] = float(res.reward)
    unparsed = 0
    for b, n in new:
      if np.isnan(trees.reward[b, n]):
        unparsed += 1
      else:
        trees.backup(b, n, float(trees.reward[b, n]))
    if cfg.max_live:
      for b in live:
        _cap_live(trees, b, cfg.max_live, cfg.max_depth)
    update_closed(trees, cfg.max_depth)
    finished = [b for b in live if tree_done(trees, b, cfg.budget) and not reported[b]]
    reported[finished] = True
    if on_finished is not None and finished:
      on_finished(trees, finished)
    if on_round is not None:
      on_round(RoundInfo(round=rnd, expansions=len(leaves), children=len(new), rollouts=len(need),
                         unparsed=unparsed, finished=finished))
    rnd += 1
  rest = [int(b) for b in np.flatnonzero(~reported)]  # done before any round (none today)
  if on_finished is not None and rest:
    on_finished(trees, rest)
  return trees
