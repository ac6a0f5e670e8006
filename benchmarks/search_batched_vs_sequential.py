"""i×MCTS with a batched frontier vs one leaf at a time: same models, same expansion budget.

    .venv/bin/python benchmarks/search_batched_vs_sequential.py \
        --out=benchmarks/results/search_batched_vs_sequential.json

Both modes run `engage_jax.search.search` on the same roots (sandbox ES conditions) with the same
tiny randomly initialised agent and simulator (`engage_jax.models.CausalLM`) and a BPE tokenizer
trained on the sandbox texts:
  batched:    `ModelEnv` — per round ONE agent `sampling.generate` call over all selected leaves
              × k, one log-prob pass, ONE simulator call, and one `rollout.simulate` over all new
              children;
  sequential: `SequentialEnv(ModelEnv)` — the same work one leaf (k candidates) and one rollout at
              a time.
Each mode runs twice; the first (cold) run includes XLA compilation, the second (warm) hits only
compiled shapes and gives the headline figures. Random models never trigger the ES reward regex, so
the rollout reward is replaced by a deterministic proxy (crc32 of the conversation's agent text
mapped to [0, 1)) to make pairs countable; the model work is unchanged. Output JSON:
  {"config": ..., "batched": M, "sequential": M, "speedup_expansions_per_s": x,
   "speedup_pairs_per_min": x}
  M = {"expansions", "pairs", "seconds", "expansions_per_s", "pairs_per_min", "cold_seconds",
       "generate_calls", "rows", "padded_rows"} (sampling calls, prompts, and batch rows after the
       sampler pads to its bucket, `sampling.bucket`, >= 8).

Measured on the 2-core CPU sandbox (2026-11-26, other jobs running, defaults: 8 trees, budget 3,
k=3, 2-layer d=64 models): 2.6x-3.4x expansions/s across runs (16 trees: 3.8x; d=256, 4 layers:
2.6x), from 14 vs 240 `generate` calls and 448 vs 1920 padded batch rows for the same 336 prompts.
On CPU the sampler's cost grows about linearly with the padded batch beyond 8 rows (B=8: 36 ms,
B=32: 114 ms, B=64: 360 ms for 16 new tokens), so the win is bounded by the padding the sequential
baseline wastes (1-3 real rows in an 8-row call), not by the number of calls (see generate_calls);
on an accelerator, where a 64-row call costs about what an 8-row one does, the ratio follows the
call counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engage_jax.data.dialogue import AGENT, Dialogue  # noqa: E402
from engage_jax.search import (ModelEnv, RolloutResult, SearchConfig, SequentialEnv,  # noqa: E402
                               extract_pairs, search)


class ProxyRewardEnv:
  """Runs the inner env unchanged; replaces each rollout reward by crc32(agent text) / 2**32."""

  def __init__(self, inner):
    self.inner = inner
    self.max_turns = inner.max_turns

  def expand(self, histories, k, seed):
    return self.inner.expand(histories, k, seed)

  def rollout(self, histories, seed):
    res = self.inner.rollout(histories, seed)
    out = []
    for h, r in zip(histories, res):
      text = "\n".join(t.text for t in h.turns if t.role == AGENT)
      out.append(RolloutResult(reward=zlib.crc32(text.encode()) / 2**32, num_turns=r.num_turns,
                               terminal=r.terminal))
    return out


def build(args):
  from flax import nnx
  from engage_jax.data import sandbox
  from engage_jax.models import CausalLM, ModelConfig
  from engage_jax.tokenizer import train_bpe
  tok = train_bpe(sandbox.all_texts(), args.vocab, tempfile.mkdtemp(prefix="bench-tok-"))
  mcfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden,
                     intermediate_size=args.hidden * 11 // 4, num_hidden_layers=args.layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  agent = CausalLM(mcfg, rngs=nnx.Rngs(args.seed + 1))
  simulator = CausalLM(mcfg, rngs=nnx.Rngs(args.seed + 2))
  conds = sandbox.random_conditions("es", args.trees, args.seed)
  roots = [Dialogue(f"bench-{i}", "es", sandbox.opening_turns("es", c), c)
           for i, c in enumerate(conds)]
  return tok, agent, simulator, roots, mcfg


def measure(env, roots, cfg):
  """Runs one search; counts `sampling.generate` calls, their rows and padded batch rows."""
  from engage_jax import sampling
  real = sampling.generate
  calls = {"generate_calls": 0, "rows": 0, "padded_rows": 0}

  def counting(model, prompts, *a, **kw):
    calls["generate_calls"] += 1
    calls["rows"] += len(prompts)
    calls["padded_rows"] += sampling.bucket(len(prompts), sampling.MIN_BATCH_BUCKET)
    return real(model, prompts, *a, **kw)

  sampling.generate = counting
  try:
    t0 = time.perf_counter()
    trees = search(env, roots, cfg)
    seconds = time.perf_counter() - t0
  finally:
    sampling.generate = real
  pairs = extract_pairs(trees, cfg.margin, cfg.pair_min_visits)
  exp = int(trees.expansions.sum())
  return {"expansions": exp, "pairs": len(pairs), "seconds": seconds,
          "expansions_per_s": exp / seconds, "pairs_per_min": 60.0 * len(pairs) / seconds,
          **calls}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--trees", type=int, default=8)
  ap.add_argument("--budget", type=int, default=3, help="expansions per tree")
  ap.add_argument("--k", type=int, default=3)
  ap.add_argument("--agent_turns", type=int, default=3, help="max_turns (ES roots have 0)")
  ap.add_argument("--max_new_tokens", type=int, default=16)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--hidden", type=int, default=64)
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="benchmarks/results/search_batched_vs_sequential.json")
  args = ap.parse_args(argv)

  import jax
  tok, agent, simulator, roots, mcfg = build(args)
  cfg = SearchConfig(k=args.k, budget=args.budget, max_depth=args.agent_turns,
                     max_turns=args.agent_turns, prune_similarity=None, margin=0.2,
                     max_new_tokens=args.max_new_tokens, sim_max_new_tokens=args.max_new_tokens,
                     seed=args.seed)
  model_env = ModelEnv.from_config(agent, simulator, tok, cfg, task="es", reward_cfg=None,
                                   max_prompt_len=256, logprobs=True)
  envs = {"batched": ProxyRewardEnv(model_env),
          "sequential": ProxyRewardEnv(SequentialEnv(model_env))}
  result = {"config": {**vars(args), "search": {k: v for k, v in cfg.__dict__.items()},
                       "model_params": mcfg.num_params, "backend": jax.default_backend(),
                       "reward": "proxy: crc32 of the conversation's agent text / 2**32"}}
  for name, env in envs.items():
    cold = measure(env, roots, cfg)
    warm = measure(env, roots, cfg)
    warm["cold_seconds"] = cold["seconds"]
    result[name] = warm
    print(name, json.dumps(warm), flush=True)
  b, s = result["batched"], result["sequential"]
  result["speedup_expansions_per_s"] = b["expansions_per_s"] / s["expansions_per_s"]
  result["speedup_pairs_per_min"] = (b["pairs_per_min"] / s["pairs_per_min"]
                                     if s["pairs_per_min"] else None)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("speedup_expansions_per_s", "speedup_pairs_per_min")}))
  return result


if __name__ == "__main__":
  main()
