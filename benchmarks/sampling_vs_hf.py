"""engage_jax.sampling.generate vs transformers' generate: same random Llama weights, greedy.

    .venv/bin/python benchmarks/sampling_vs_hf.py            # full: B=16, 128-token prompts, 128 new
    .venv/bin/python benchmarks/sampling_vs_hf.py --quick    # smoke run (small model, few tokens)

Config (full): Llama, 6 layers, d_model 512, 8 heads, 2 KV heads, FFN 1408, vocab 8192 (~25M
params), fp32, torch with 2 threads. Both sides are warmed up, then timed `--reps` times,
interleaved (the machine is shared: the best and median of each are reported). tokens/s counts
new tokens over the whole call (prefill + decode); ms/step is the decode-only time per token step,
from (time(max_new) - time(1 new token)) / (max_new - 1). Achieved GFLOP/s and GB/s of the decode
step are compared to an XLA fp32 2048² matmul and a streaming read measured in the same run.
Writes benchmarks/results/sampling_vs_hf.json (or --out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402


def _timeit(fn, reps: int) -> list[float]:
  out = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def machine_peaks(reps: int = 5) -> dict:
  """XLA fp32 2048² matmul GFLOP/s and streaming-read GB/s (best of `reps`)."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  mm(x).block_until_ready()
  t_mm = min(_timeit(lambda: mm(x).block_until_ready(), reps))
  big = jnp.ones((64 * 1024 * 1024,), jnp.float32)  # 256 MB
  rd = jax.jit(jnp.sum)
  rd(big).block_until_ready()
  t_rd = min(_timeit(lambda: rd(big).block_until_ready(), reps))
  return {"matmul_gflops": 2 * 2048 ** 3 / t_mm / 1e9, "read_gbs": big.nbytes / t_rd / 1e9}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small smoke run")
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampling_vs_hf.json"))
  args = ap.parse_args(argv)

  import torch
  import transformers
  import jax.numpy as jnp
  from engage_jax import models, sampling

  torch.set_num_threads(args.threads)
  if args.quick:
    shape = dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    batch, prompt_len, new = 4, 32, 16
  else:
    shape = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=2)
    batch, prompt_len, new = 16, 128, 128
  reps = args.reps or (2 if args.quick else 3)
  hf_cfg = transformers.LlamaConfig(**shape, max_position_embeddings=1024, tie_word_embeddings=False,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    model = models.from_pretrained(tmp, dtype=jnp.float32)
  cfg = model.config
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, cfg.vocab_size, (batch, prompt_len)).tolist()
  ids = torch.tensor(prompts)

  def run_hf(n):
    with torch.no_grad():
      out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, prompt_len:].tolist()

  def run_jax(n):
    return sampling.generate(model, prompts, max_new_tokens=n, temperature=0.0, stop_token_ids=())

  # warm-up (compiles both max_new values: same bucket, one executable) + parity check
  ours, ref = run_jax(new), run_hf(new)
  run_jax(1), run_hf(1)
  match = float(np.mean(np.array(ours) == np.array(ref)))
  t = {"jax": [], "hf": [], "jax1": [], "hf1": []}
  for _ in range(reps):
    t["jax"] += _timeit(lambda: run_jax(new), 1)
    t["hf"] += _timeit(lambda: run_hf(new), 1)
    t["jax1"] += _timeit(lambda: run_jax(1), 1)
    t["hf1"] += _timeit(lambda: run_hf(1), 1)
  peaks = machine_peaks()

  c = cfg
  non_embed = cfg.num_params - c.vocab_size * c.hidden_size       # lm_head counted, embedding not
  s_mean = prompt_len + (new + 1) / 2                              # mean attended length
  attn_flops = 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * s_mean
  flops_step = batch * (2 * non_embed + attn_flops)
  bytes_step = 4 * non_embed + 4 * 2 * c.num_hidden_layers * batch * c.num_key_value_heads * c.head_dim * s_mean

  def side(k):
    best, med = min(t[k]), statistics.median(t[k])
    step = max(min(t[k]) - min(t[k + "1"]), 1e-9) / (new - 1)
    return {"seconds_best": best, "seconds_median": med, "tokens_per_s": batch * new / best,
            "tokens_per_s_median": batch * new / med, "ms_per_step": step * 1e3,
            "prefill_plus_1_s": min(t[k + "1"]),
            "decode_gflops": flops_step / step / 1e9, "decode_gbs": bytes_step / step / 1e9}
  res = {
      "config": dict(shape, params=cfg.num_params, batch=batch, prompt_len=prompt_len,
                     max_new_tokens=new, dtype="float32", greedy=True, torch_threads=args.threads,
                     quick=args.quick, reps=reps),
      "engage_jax": side("jax"), "transformers": side("hf"),
      "machine": _results.machine(**peaks),
      "greedy_token_match": match,
      "decode_flops_per_step": flops_step, "decode_bytes_per_step": bytes_step,
  }
  res["speedup_tokens_per_s"] = res["engage_jax"]["tokens_per_s"] / res["transformers"]["tokens_per_s"]
  res["speedup_ms_per_step"] = res["transformers"]["ms_per_step"] / res["engage_jax"]["ms_per_step"]
  res["engage_jax"]["pct_matmul_peak"] = 100 * res["engage_jax"]["decode_gflops"] / peaks["matmul_gflops"]
  res["engage_jax"]["pct_read_bw"] = 100 * res["engage_jax"]["decode_gbs"] / peaks["read_gbs"]
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
