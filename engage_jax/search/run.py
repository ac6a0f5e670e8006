"""Resumable i×MCTS over many conditions, written shard by shard.

Roots are split in order into shards of `trees_per_shard`. Shard s searches its trees with the seed
`shard_seed(cfg.seed, s)` (independent of the other shards) and, when finished, writes atomically
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

from engage_jax import preemption
from engage_jax.data.dialogue import Dialogue
from engage_jax.seeding import sub_seed
from engage_jax.search.base import Env
from engage_jax.search.imcts import RoundInfo, SearchConfig, search, validate
from engage_jax.search.pairs import atomic_write_text, extract_pairs, pair_key, read_jsonl, write_jsonl


# keys of the launcher's `config.search` section that the runner and pipeline read, not i×MCTS:
# the number of trees (roots), trees per shard, and the Speakers' prompt length.
RUNNER_KEYS = ("n_conditions", "trees_per_shard", "max_prompt_len")


def config_from_section(section: Mapping, **overrides) -> SearchConfig:
  """The SearchConfig of a `config.search` section (configs/base.py): every key but RUNNER_KEYS
  is a SearchConfig field (unknown ones are a ValueError)."""
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  return SearchConfig.from_dict({k: v for k, v in d.items() if k not in RUNNER_KEYS}, **overrides)


def shard_seed(seed: int, shard: int) -> int:
  """The search seed of shard `shard` (depends only on the run seed and the shard index)."""
  return sub_seed(seed, 7919, shard)


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
          "roots": [r.id for r in roots]}


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
  from engage_jax.progress import Scalars
  variances = []
  for t in stats["trees"]:
    vals = tree_values(t)
    if len(vals) > 1:
      variances.append(float(np.var(vals)))
  rec = {"step": shard, "pairs": stats["pairs"], "expansions": stats["expansions"],
         "expansions_per_s": stats["expansions"] / max(seconds, 1e-9),
         "reward_var": float(np.mean(variances)) if variances else 0.0,
         "trees_with_variance": sum(v > 0 for v in variances), "unparsed": stats.get("unparsed", 0)}
  from engage_jax import multihost

  def append():
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
  multihost.main_only(append)  # process 0 (a progress log: nobody reads it back for decisions)
  tb = Scalars(out_dir, prefix="search/")
  tb.write(shard, {k: v for k, v in rec.items() if k != "step"})
  tb.close()


def run_search(env: Env, roots: Sequence[Dialogue], cfg: SearchConfig, out_dir: str, *,
               trees_per_shard: int = 16, progress: bool = True, pairs_dir: str | None = None,
               after_shard: Callable[[int], None] | None = None) -> dict:
  """Searches all roots shard by shard into `out_dir`; returns a summary dict.
  pairs_dir: where the pair shards go (default `<out_dir>/pairs`; the pipeline: `<workdir>/pairs`).

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
  validate(roots, cfg, env)
  manifest = _manifest(roots, cfg, trees_per_shard)
  man_path = os.path.join(out_dir, "search_config.json")
  if os.path.exists(man_path):
    with open(man_path, encoding="utf-8") as f:
      old = json.load(f)
    if old != json.loads(json.dumps(manifest)):
      raise ValueError(f"{man_path}: an existing search in {out_dir} used a different config, "
                       f"roots or trees_per_shard; use a new directory or remove it")
  else:
    atomic_write_text(man_path, json.dumps(manifest, indent=1))

  from tqdm.auto import tqdm

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

  try:
    with preemption.deferred():
      for s in range(n_shards):
        lo, hi = s * trees_per_shard, min(len(roots), (s + 1) * trees_per_shard)
        pairs_path, trees_path = shard_paths(out_dir, s, pairs_dir)
        if os.path.exists(pairs_path):
          done = read_jsonl(pairs_path)
          seen.update(pair_key(p) for p in done)
          totals["pairs"] += len(done)
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
          continue

        shard_counts = {"unparsed": 0, "children": 0}

        def on_round(info: RoundInfo):
          nonlocal new_expansions
          new_expansions += info.expansions
          totals["expansions"] += info.expansions
          shard_counts["unparsed"] += info.unparsed  # noqa: B023 - called within this shard's search
          shard_counts["children"] += info.children  # noqa: B023
          postfix()
          # a safe point: a stop request abandons this unfinished shard (rerun: searched again,
          # with its own seed, so the pairs are the same); finished shards are on disk
          preemption.check(where=f"search shard {s}")  # noqa: B023

        t_shard = time.perf_counter()
        shard_cfg = dataclasses.replace(cfg, seed=shard_seed(cfg.seed, s))
        trees = search(env, roots[lo:hi], shard_cfg, on_round=on_round)
        pairs = extract_pairs(trees, cfg.margin, cfg.pair_min_visits,
                              tree_ids=list(range(lo, hi)), seen=seen)
        stats = {"shard": s, "seed": shard_cfg.seed, "tree_ids": list(range(lo, hi)),
                 "expansions": int(trees.expansions.sum()), "pairs": len(pairs), **shard_counts,
                 "trees": [trees.stats(b) for b in range(trees.batch_size)]}
        atomic_write_text(trees_path, json.dumps(stats))
        write_jsonl(pairs_path, pairs)
        _log_shard(out_dir, s, stats, time.perf_counter() - t_shard)
        totals["pairs"] += len(pairs)
        totals["new_pairs"] += len(pairs)
        totals["unparsed"] += shard_counts["unparsed"]
        totals["children"] += shard_counts["children"]
        totals["trees_with_variance"] += sum(tree_has_variance(t) for t in stats["trees"])
        bar.update(hi - lo)
        postfix()
        if after_shard is not None:
          after_shard(s)
        preemption.check(where=f"after search shard {s}")
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


def read_search_pairs(out_dir: str) -> list[dict]:
  """All pairs of a search directory (`<out_dir>/pairs/shard-*.jsonl`), in shard order."""
  out = []
  for path in sorted(glob.glob(os.path.join(out_dir, "pairs", "shard-*.jsonl"))):
    out.extend(read_jsonl(path))
  return out
