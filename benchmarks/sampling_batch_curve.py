"""Sampling throughput against the batch size: which generate batch the search and evaluation should fill.

    .venv/bin/python benchmarks/sampling_batch_curve.py            # SmolLM2-135M (GGUF), B = 4 .. 96
    .venv/bin/python benchmarks/sampling_batch_curve.py --quick    # smoke run: tiny random model, B = 4, 8, 16
    .venv/bin/python benchmarks/sampling_batch_curve.py --batches 8,16,32 --reps 5

For each batch size B (buckets of `sampling.generate`: 8, 12, 16, 24, 32, 48, 64, 96, ...; 4 pads
to 8) one `sampling.generate` call as the search makes it: B chat prompts of three lengths in one
prompt bucket, T=0.7, top-p 0.9, per-row seeds (`row_seeds`, the search's and evaluation's path), no
stop token so every row writes all its tokens. Each B is compiled and warmed first (`compile_s`:
first call minus the steady median), then `--reps` rounds time every B in turn (interleaved, so a
change of load hits all sizes alike), each with N new tokens and with N_short (same cache bucket):
  tok_per_s            B * N / median seconds of the N-token call (prefill + decode, what a caller gets)
  decode_ms_per_step   (median(N) - median(N_short)) / (N - N_short)
  prefill_s            median(N_short) - N_short * decode step
  row_ms_per_step      decode_ms_per_step / B (the cost of one more row)
`recommended_batch` is the smallest B whose tok/s reaches 90% of the best measured (past it a
larger batch buys little and every call waits longer); the JSON maps it to the SmolLM2 configs:
search.trees_in_flight = B / search.k and eval.batch_size >= B. loadavg is recorded before, after
and at every round: compare only figures from one run, and only on an idle machine.
Writes benchmarks/results/sampling_batch_curve.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402

KNEE = 0.9  # recommended: the smallest batch within this share of the best tok/s


def _model(quick: bool):
  """(model, tokenizer or None, name)."""
  if quick:
    from flax import nnx
    from engage_jax.models import CausalLM, ModelConfig
    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return CausalLM(cfg, rngs=nnx.Rngs(0)), None, "tiny random Llama (2 layers, d 64, vocab 512)"
  import jax.numpy as jnp
  from engage_jax import models
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  path = smollm2_135m_instruct()
  return (models.from_pretrained(path, dtype=jnp.float32), ChatTokenizer.load(path),
          "SmolLM2-135M-Instruct Q4_1 GGUF, fp32 compute")


def _prompts(tok, vocab: int, batch: int, plen: int) -> list[list[int]]:
  """batch prompts of plen, plen-1, plen-2 tokens (one prompt bucket): a chat-templated ES opening
  with the SmolLM2 tokenizer, else fixed ids."""
  if tok is None:
    base = [1 + (i * 37) % (vocab - 1) for i in range(4 * plen)]
  else:
    text = ("I have been feeling very low since I lost my job. My family depends on me and I do not know "
            "how to tell them. Every morning I wake up anxious and I can't focus on anything at all. ")
    base = tok.apply_chat([{"role": "system", "content": "You are a supporter."},
                           {"role": "user", "content": text * 6}], add_generation_prompt=True)
  return [base[-(plen - i % 3):] for i in range(batch)]


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny random model, B = 4, 8, 16, short calls")
  ap.add_argument("--batches", default="", help="comma-separated batch sizes (default 4..96)")
  ap.add_argument("--prompt-len", type=int, default=0, help="default 128 (quick 32)")
  ap.add_argument("--new-tokens", type=int, default=0, help="N, default 64 (quick 32); N_short = N/2 + 1")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--k", type=int, default=3, help="search.k of the configs (trees in flight = B / k)")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  from engage_jax import sampling
  from engage_jax.seeding import sub_seed

  quick = args.quick
  batches = ([int(x) for x in args.batches.split(",") if x] if args.batches
             else [4, 8, 16] if quick else [4, 8, 12, 16, 24, 32, 48, 64, 96])
  plen = args.prompt_len or (32 if quick else 128)
  new = args.new_tokens or (32 if quick else 64)
  short = new // 2 + 1  # the same power-of-two cache bucket as `new` (for new a power of two)
  out_path = args.out or str(ROOT / "benchmarks" / "results" /
                             ("sampling_batch_curve_quick.json" if quick else "sampling_batch_curve.json"))
  load_before = os.getloadavg()
  model, tok, name = _model(quick)
  vocab = model.config.vocab_size

  def call(batch: int, n: int) -> float:
    prompts = _prompts(tok, vocab, batch, plen)
    t0 = time.perf_counter()
    out = sampling.generate(model, prompts, max_new_tokens=n, temperature=0.7, top_p=0.9, stop_token_ids=(),
                            row_seeds=[sub_seed(0, i) for i in range(batch)])
    sec = time.perf_counter() - t0
    assert all(len(x) == n for x in out)
    return sec

  first = {}
  for b in batches:  # compile + warm every shape before any timing
    first[b] = (call(b, new), call(b, short))
  times = {b: ([], []) for b in batches}
  load_rounds = []
  for _ in range(args.reps):
    load_rounds.append(os.getloadavg()[0])
    for b in batches:
      times[b][0].append(call(b, new))
      times[b][1].append(call(b, short))
  curve = []
  for b in batches:
    full, part = statistics.median(times[b][0]), statistics.median(times[b][1])
    step = max(full - part, 0.0) / (new - short)
    curve.append({"batch": b, "bucket": sampling.bucket(b, sampling.MIN_BATCH_BUCKET),
                  "seconds_median": round(full, 4), "seconds_all": [round(x, 4) for x in times[b][0]],
                  "tok_per_s": round(b * new / full, 2), "decode_ms_per_step": round(1000 * step, 3),
                  "row_ms_per_step": round(1000 * step / b, 4),
                  "prefill_s": round(max(part - short * step, 0.0), 4),
                  "compile_s": round(max(first[b][0] - full, 0.0) + max(first[b][1] - part, 0.0), 3)})
  best = max(c["tok_per_s"] for c in curve)
  rec = min(c["batch"] for c in curve if c["tok_per_s"] >= KNEE * best)
  res = {
      "benchmark": "sampling_batch_curve", "model": name, "quick": quick,
      "prompt_len": plen, "new_tokens": new, "new_tokens_short": short, "temperature": 0.7, "top_p": 0.9,
      "reps": args.reps, "per_row_seeds": True, "curve": curve,
      "best_tok_per_s": best, "knee_share": KNEE, "recommended_batch": rec,
      "recommended_config": {"search.trees_in_flight": max(1, rec // args.k), "search.k": args.k,
                             "eval.batch_size_at_least": rec},
      "loadavg_before": list(load_before), "loadavg_rounds_1m": load_rounds,
      "loadavg_after": list(os.getloadavg()),
      "machine": _results.machine(),
      "command": "python benchmarks/sampling_batch_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
  }
  return _results.write(res, out_path)


if __name__ == "__main__":
  main()
