"""Resumable i×MCTS over many conditions, written shard by shard.

Roots are split in order into shards of `trees_per_shard`. All unfinished shards' trees are
searched in ONE `imcts.search` with `trees_in_flight` trees at a time (default trees_per_shard):
when a tree finishes, the next waiting tree (of the same or a later shard) takes its place, so
the generate calls stay full instead of waiting for a shard's slowest tree. Every env row is
seeded by `imcts.node_seed(cfg.seed, tree id, node, ...)` (tree id = the root's index), so a
tree, and the pairs, do not depend on trees_per_shard, trees_in_flight or which shards a resumed
run skips. A shard is written as soon as its trees and all earlier shards are done, atomically:
  <out>/trees/shard-XXXXX.json   per-tree stats (visits, values, depth, expansions) + shard info
  <out>/pairs/shard-XXXXX.jsonl  its pairs (docs/CONTRACTS.md), written last (`pairs_dir=`: there
                                 instead; the pipeline writes them to <workdir>/pairs).
A restart skips every shard whose pairs file exists, so a resumed run yields exactly the pairs of
an uninterrupted one; nothing is written twice. Pairs are deduplicated across shards too (a
shard's pairs are checked against those of the shards before it).
`<out>/search_config.json` records the config and roots; resuming with different ones is an error.

Typical use (the launcher / sandbox tests):
  cfg = config_from_section(config.search, seed=config.seed)   # RUNNER_KEYS are not the algorithm's
  env = ModelEnv.from_config(agent_model, sim_model, tokenizer, cfg, task=..., reward_cfg=...,
                             max_prompt_len=config.search.max_prompt_len)
  summary = run_search(env, roots, cfg, out_dir, trees_per_shard=config.search.trees_per_shard)
  pairs = read_search_pairs(out_dir)
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from engage_jax import preemption, multihost
from engage_jax.data.dialogue import Dialogue
from engage_jax.search.base import Env
from engage_jax.search.imcts import RoundInfo, SearchConfig, search, validate
from engage_jax.search.pairs import atomic_write_text, extract_pairs, pair_key, read_jsonl, write_jsonl
from engage_jax.search.tree import Trees
from engage_jax.progress import Scalars
from engage_jax.fields import Int, field
from engage_jax.rollout import Speaker


@dataclasses.dataclass(frozen=True)
class SearchSection(SearchConfig):
  """config.search: the algorithm's SearchConfig + where and how much the pipeline searches."""
  n_conditions: int = field(96, "trees (one per training condition)", Int(1))
  trees_per_shard: int = field(16, "trees per shard file (resume granularity)", Int(1))
  trees_in_flight: int = field(0, "trees searched at once, across shards (0: trees_per_shard); a finished tree "
                                  "is replaced at once, so generate calls hold trees_in_flight x k rows", Int(0))
  max_prompt_len: int = field(Speaker.max_prompt_len, "prompt tokens kept (a longer chat drops its oldest "
                              "messages and is prefilled afresh)", Int(1))

  @staticmethod
  def cross_problems(cfg, key: str) -> list[tuple[str, str]]:
    """The algorithm's own validation (SearchConfig's __post_init__ / from_dict) of the section."""
    try:
      config_from_section(cfg.search, seed=cfg.seed)
    except (ValueError, TypeError) as e:
      return [(key, str(e))]
    return []


# config.search's keys that the runner and pipeline read, not i×MCTS
RUNNER_KEYS = tuple(f.name for f in dataclasses.fields(SearchSection)
                    if f.name not in {g.name for g in dataclasses.fields(SearchConfig)})
RNG_SCHEME = "per_tree"  # the manifest's "rng": rows seeded by imcts.node_seed (older runs: per shard)


def config_from_section(section: Mapping, **overrides) -> SearchConfig:
  """The SearchConfig of a `config.search` section (configs/base.py): every key but RUNNER_KEYS
  is a SearchConfig field (unknown ones are a ValueError)."""
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  return SearchConfig.from_dict({k: v for k, v in d.items() if k not in RUNNER_KEYS}, **overrides)


def shard_paths(out_dir: str, shard: int, pairs_dir: str | None = None) -> tuple[str, str]:
  """(pairs path, trees path) of a shard: `<pairs_dir>/shard-S.jsonl` (default
  `<out_dir>/pairs`) and `<out_dir>/trees/shard-S.json`."""
  return (os.path.join(pairs_dir or os.path.join(out_dir, "pairs"), f"shard-{shard:05d}.jsonl"),
          os.path.join(out_dir, "trees", f"shard-{shard:05d}.json"))


def _manifest(roots: Sequence[Dialogue], cfg: SearchConfig, trees_per_shard: int) -> dict:
  cfg_json = dataclasses.asdict(cfg)
  if cfg_json.get("reward_horizon") == "future":  # the default: manifests of older searches stay valid
    del cfg_json["reward_horizon"]
  if cfg_json.get("required_condition") is not None:
    cfg_json["required_condition"] = list(cfg_json["required_condition"])
  return {"config": cfg_json, "trees_per_shard": trees_per_shard,
          "roots": [r.id for r in roots], "rng": RNG_SCHEME}


def tree_values(tree_stats: dict) -> list[float]:
  """The scored node values of one tree (`SearchTrees.stats`: "value" per node, the root first)."""
  return [v for v in tree_stats["value"][1:] if v is not None]


def tree_has_variance(tree_stats: dict) -> bool:
  """True when a tree's scored nodes do not all have the same value (no variance: no pairs)."""
  vals = tree_values(tree_stats)
  return len(vals) > 1 and float(np.var(vals)) > 0


def _log_shard(out_dir: str, shard: int, stats: dict, seconds: float) -> None:
  """One line per shard in `<out_dir>/metrics.jsonl` + TensorBoard: pairs, expansions/s, and the
  within-tree variance of node values (no variance → no pairs)."""
  variances = []
  for t in stats["trees"]:
    vals = tree_values(t)
    if len(vals) > 1:
      variances.append(float(np.var(vals)))
  rec = {"step": shard, "pairs": stats["pairs"], "expansions": stats["expansions"],
         "expansions_per_s": stats["expansions"] / max(seconds, 1e-9),
         "reward_var": float(np.mean(variances)) if variances else 0.0,
         "trees_with_variance": sum(v > 0 for v in variances), "unparsed": stats.get("unparsed", 0)}

  def append():
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
  multihost.main_only(append)  # process 0 (a progress log: nobody reads it back for decisions)
  tb = Scalars(out_dir, prefix="search/")
  tb.write(shard, {k: v for k, v in rec.items() if k != "step"})
  tb.close()


def run_search(env: Env, roots: Sequence[Dialogue], cfg: SearchConfig, out_dir: str, *,
               trees_per_shard: int = SearchSection.trees_per_shard, progress: bool = True, pairs_dir: str | None = None,
               after_shard: Callable[[int], None] | None = None, trees_in_flight: int = SearchSection.trees_in_flight) -> dict:
  """Searches all roots shard by shard into `out_dir`; returns a summary dict.
  pairs_dir: where the pair shards go (default `<out_dir>/pairs`; the pipeline: `<workdir>/pairs`).
  trees_in_flight: trees searched at once across shards (0 = trees_per_shard); the generate
  batches hold trees_in_flight × k rows. It changes no pair (see the module docstring), so a
  resumed run may use another value.

  summary: {"trees", "pairs", "expansions", "seconds", "shards", "shards_skipped", "children",
            "unparsed", "unparsed_rate", "trees_with_variance", "tree_variance_share",
            "expansions_per_s", "pairs_per_min"} (trees_with_variance: trees whose scored nodes differ in value) (unparsed: new
            children whose P4G outcome gave no donation, not backed up; counts include skipped shards;
            seconds and the rates count only this run's work).
  after_shard(s) is called after shard s is written (hooks, tests).
  Raises ValueError on bad config/roots (before any env call) or when `out_dir` holds a search
  with a different config or roots.
  """
  if trees_per_shard < 1:
    raise ValueError(f"run_search: trees_per_shard must be >= 1; got {trees_per_shard}")
  if trees_in_flight < 0:
    raise ValueError(f"run_search: trees_in_flight must be >= 0 (0 = trees_per_shard); got {trees_in_flight}")
  validate(roots, cfg, env)
  manifest = _manifest(roots, cfg, trees_per_shard)
  man_path = os.path.join(out_dir, "search_config.json")
  if os.path.exists(man_path):
    with open(man_path, encoding="utf-8") as f:
      old = json.load(f)
    if old.get("rng") != RNG_SCHEME:
      raise ValueError(f"{man_path}: the search in {out_dir} seeded its trees per shard (an older "
                       f"engage_jax); its pairs would not match this version's; use a new directory")
    if old != json.loads(json.dumps(manifest)):
      raise ValueError(f"{man_path}: an existing search in {out_dir} used a different config, "
                       f"roots or trees_per_shard; use a new directory or remove it")
  else:
    atomic_write_text(man_path, json.dumps(manifest, indent=1))


  n_shards = -(-len(roots) // trees_per_shard)
  seen: set[str] = set()
  totals = {"pairs": 0, "new_pairs": 0, "expansions": 0, "skipped": 0, "unparsed": 0, "children": 0,
            "trees_with_variance": 0}
  new_expansions = 0
  t0 = time.perf_counter()
  bar = tqdm(total=len(roots), unit="tree", desc="i×MCTS", disable=not progress)

  def postfix():
    dt = max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix(pairs=totals["pairs"], exp_s=f"{new_expansions / dt:.2f}")

  def span(s: int) -> tuple[int, int]:
    return s * trees_per_shard, min(len(roots), (s + 1) * trees_per_shard)

  todo = [s for s in range(n_shards) if not os.path.exists(shard_paths(out_dir, s, pairs_dir)[0])]
  # the pending shards' trees, searched together: search index i is global tree tree_ids[i]
  tree_ids = [t for s in todo for t in range(*span(s))]
  pos = {t: i for i, t in enumerate(tree_ids)}
  done = np.zeros((len(tree_ids),), bool)
  pending = set(todo)
  state = {"next": 0, "last_write": time.perf_counter()}      # next shard to write or skip

  def advance(trees) -> None:
    """Skips finished shards and writes pending ones whose trees are all done, in shard order
    (pairs are deduplicated against the shards before them)."""
    while state["next"] < n_shards:
      s = state["next"]
      lo, hi = span(s)
      pairs_path, trees_path = shard_paths(out_dir, s, pairs_dir)
      if s not in pending:  # written by an earlier run
        old_pairs = read_jsonl(pairs_path)
        seen.update(pair_key(p) for p in old_pairs)
        totals["pairs"] += len(old_pairs)
        if os.path.exists(trees_path):
          with open(trees_path, encoding="utf-8") as f:
            old = json.load(f)
          totals["expansions"] += int(old["expansions"])
          totals["unparsed"] += int(old.get("unparsed", 0))
          totals["children"] += int(old.get("children", 0))
          totals["trees_with_variance"] += sum(tree_has_variance(t) for t in old.get("trees", []))
        totals["skipped"] += 1
        bar.update(hi - lo)
        postfix()
        state["next"] += 1
        continue
      first = pos[lo]  # the shard's trees are contiguous in the search: [first, first + hi - lo)
      if trees is None or not done[first:first + hi - lo].all():
        return
      shard = _tree_rows(trees, first, first + hi - lo)
      pairs = extract_pairs(shard, cfg.margin, cfg.pair_min_visits, tree_ids=list(range(lo, hi)), seen=seen)
      counts = _child_counts(shard)
      stats = {"shard": s, "seed": cfg.seed, "rng": RNG_SCHEME, "tree_ids": list(range(lo, hi)),
               "expansions": int(shard.expansions.sum()), "pairs": len(pairs), **counts,
               "trees": [shard.stats(b) for b in range(shard.batch_size)]}
      atomic_write_text(trees_path, json.dumps(stats))
      write_jsonl(pairs_path, pairs)
      now = time.perf_counter()
      _log_shard(out_dir, s, stats, now - state["last_write"])
      state["last_write"] = now
      totals["pairs"] += len(pairs)
      totals["new_pairs"] += len(pairs)
      totals["unparsed"] += counts["unparsed"]
      totals["children"] += counts["children"]
      totals["trees_with_variance"] += sum(tree_has_variance(t) for t in stats["trees"])
      totals["expansions"] += stats["expansions"]
      bar.update(hi - lo)
      postfix()
      state["next"] += 1
      if after_shard is not None:
        after_shard(s)
      preemption.check(where=f"after search shard {s}")

  def on_finished(trees, finished: list[int]) -> None:
    done[finished] = True
    advance(trees)

  def on_round(info: RoundInfo):
    nonlocal new_expansions
    new_expansions += info.expansions
    postfix()
    # a safe point: a stop request abandons the unfinished shards (rerun: searched again with the
    # same per-tree seeds, so the pairs are the same); finished shards are on disk
    preemption.check(where="search round")

  try:
    with preemption.deferred():
      advance(None)  # the finished shards before the first pending one
      if tree_ids:
        search(env, [roots[t] for t in tree_ids], cfg, on_round=on_round, tree_ids=tree_ids,
               in_flight=trees_in_flight or trees_per_shard, on_finished=on_finished)
      advance(None)  # finished shards after the last pending one
  finally:
    bar.close()
  seconds = time.perf_counter() - t0
  return {"trees": len(roots), "pairs": totals["pairs"], "expansions": totals["expansions"],
          "seconds": seconds, "shards": n_shards, "shards_skipped": totals["skipped"],
          "children": totals["children"], "unparsed": totals["unparsed"],
          "unparsed_rate": totals["unparsed"] / max(totals["children"], 1),
          "trees_with_variance": totals["trees_with_variance"],
          "tree_variance_share": totals["trees_with_variance"] / max(len(roots), 1),
          "expansions_per_s": new_expansions / max(seconds, 1e-9),
          "pairs_per_min": 60.0 * totals["new_pairs"] / max(seconds, 1e-9)}


def _tree_rows(trees: Trees, lo: int, hi: int) -> Trees:
  """Trees lo..hi-1 as a batch of their own (numpy views, lists sliced)."""
  return Trees(**{f.name: getattr(trees, f.name)[lo:hi] for f in dataclasses.fields(trees)})


def _child_counts(trees: Trees) -> dict:
  """{"children": nodes added below the roots, "unparsed": those whose outcome gave no reward
  (reward NaN: `base.UNPARSED`, never backed up)}; every other child has its reward."""
  used = np.arange(trees.capacity)[None, :] < trees.num_nodes[:, None]
  used[:, 0] = False
  return {"children": int(used.sum()), "unparsed": int((used & np.isnan(trees.reward)).sum())}


def read_search_pairs(out_dir: str) -> list[dict]:
  """All pairs of a search directory (`<out_dir>/pairs/shard-*.jsonl`), in shard order."""
  out = []
  for path in sorted(glob.glob(os.path.join(out_dir, "pairs", "shard-*.jsonl"))):
    out.extend(read_jsonl(path))
  return out
