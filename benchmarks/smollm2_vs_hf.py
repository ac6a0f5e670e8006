"""SmolLM2-135M-Instruct (the real GGUF checkpoint): engage_jax vs transformers in the same run.

    .venv/bin/python benchmarks/smollm2_vs_hf.py            # B=32 sampling, B=8 x 256 training
    .venv/bin/python benchmarks/smollm2_vs_hf.py --quick    # smoke run

Both sides load the same GGUF (engage_jax through `models.from_pretrained`, transformers through its
own GGUF loader), fp32, torch with 2 threads.
- sampling: B=32 chat prompts left-cut to 128 tokens, 48 new tokens, T=0.7, top-p 0.9 (no stop
  token, so both write 48 tokens a row); warmed up, then `--reps` interleaved timings; plus a greedy
  parity check (4 prompts x 32 tokens, token-identical expected).
- training: one optimizer step of full fine-tuning on B=8 x 256 tokens (AdamW, loss on every
  token): engage_jax's own SFT train step (`train.sft.train_sft`, the pipeline's code) vs a torch
  loop; tokens/s over the timed steps after a warm-up. Also engage_jax with LoRA r=16 on all seven
  projections (`models.lora`, base frozen) on the same batches.
Writes benchmarks/results/smollm2_vs_hf.json (or --out).
"""
from __future__ import annotations

import argparse
import os
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


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "smollm2_vs_hf.json"))
  args = ap.parse_args(argv)
  import jax.numpy as jnp
  import torch
  import transformers
  from engage_jax import models, sampling
  from engage_jax.data.sft import Example
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  from engage_jax.train import sft as sft_train
  from engage_jax.train.config import TrainConfig

  torch.set_num_threads(2)
  path = smollm2_135m_instruct()
  tok = ChatTokenizer.load(path)
  model = models.from_pretrained(path, dtype=jnp.float32)
  d, name = os.path.split(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
  batch, plen, new = (4, 32, 8) if args.quick else (32, 128, 48)
  text = ("I have been feeling very low since I lost my job. My family depends on me and I do not know "
          "how to tell them. Every morning I wake up anxious and I can't focus on anything at all. ")
  base = tok.apply_chat([{"role": "system", "content": "You are a supporter."},
                         {"role": "user", "content": text * 4}], add_generation_prompt=True)
  prompts = [base[-(plen - i % 3):] for i in range(batch)]   # three lengths, one prompt bucket
  L = max(map(len, prompts))

  def run_jax():
    return sampling.generate(model, prompts, max_new_tokens=new, temperature=0.7, top_p=0.9, seed=0,
                             stop_token_ids=())

  ids = torch.full((batch, L), tok.pad_id)
  mask = torch.zeros((batch, L), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1

  def run_hf():
    with torch.no_grad():
      torch.manual_seed(0)
      return hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                         temperature=0.7, top_p=0.9, top_k=0, eos_token_id=None, pad_token_id=tok.pad_id)

  run_jax(), run_hf()
  t = {"jax": [], "hf": []}
  for _ in range(args.reps):
    for k, fn in (("jax", run_jax), ("hf", run_hf)):
      t0 = time.perf_counter()
      fn()
      t[k].append(time.perf_counter() - t0)
  sampling_res = {k: {"seconds_best": min(v), "seconds_median": statistics.median(v),
                      "tokens_per_s": batch * new / min(v)} for k, v in t.items()}

  # greedy parity: 4 prompts x 32 tokens
  gp = [p[-48:] for p in prompts[:4]]
  ours = sampling.generate(model, gp, max_new_tokens=32 if not args.quick else 8, temperature=0.0,
                           stop_token_ids=())
  same = 0
  for p, o in zip(gp, ours):
    with torch.no_grad():
      r = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                      max_new_tokens=len(o), min_new_tokens=len(o), do_sample=False, eos_token_id=None,
                      pad_token_id=tok.pad_id)
    same += int(r[0, len(p):].tolist() == o)

  # training: B x T, full fine-tuning, AdamW
  tb, tt, steps = (2, 64, 2) if args.quick else (8, 256, 3)
  rng = np.random.default_rng(0)
  rows = rng.integers(3, tok.vocab_size, (tb, tt))
  exs = [Example(r.tolist(), [0] + [1] * (tt - 1)) for r in rows]
  cfg = dict(learning_rate=1e-5, warmup_steps=0, batch_size=tb, max_len=tt, min_bucket=tt, log_every=1,
             checkpoint_every=0, eval_at_start=False, progress=False)
  with tempfile.TemporaryDirectory() as tmp:
    sft_train.train_sft(model, exs * 2, TrainConfig.from_any(dict(cfg, steps=1)), os.path.join(tmp, "warm"))
    t0 = time.perf_counter()
    sft_train.train_sft(model, exs * (steps + 1), TrainConfig.from_any(dict(cfg, steps=steps)),
                        os.path.join(tmp, "timed"))
    jax_train_s = (time.perf_counter() - t0) / steps
    # the same step with LoRA r=16 on all seven projections (adapters trained, base frozen)
    from flax import nnx
    from engage_jax.models import lora
    lmodel = lora.apply_lora(models.from_pretrained(path, dtype=jnp.float32), lora.LoraConfig(rank=16, alpha=32),
                             rngs=nnx.Rngs(0))
    sft_train.train_sft(lmodel, exs * 2, TrainConfig.from_any(dict(cfg, steps=1)), os.path.join(tmp, "lwarm"))
    t0 = time.perf_counter()
    sft_train.train_sft(lmodel, exs * (steps + 1), TrainConfig.from_any(dict(cfg, steps=steps)),
                        os.path.join(tmp, "ltimed"))
    lora_train_s = (time.perf_counter() - t0) / steps
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
  x = torch.tensor(rows)

  def torch_step():
    opt.zero_grad()
    out = hf(x, labels=x)
    out.loss.backward()
    opt.step()

  torch_step()
  t0 = time.perf_counter()
  for _ in range(steps):
    torch_step()
  hf_train_s = (time.perf_counter() - t0) / steps
  res = {
      "config": {"model": name, "params": model.config.num_params, "sampling_batch": batch, "prompt_len": plen,
                 "max_new_tokens": new, "temperature": 0.7, "top_p": 0.9, "train_batch": tb, "train_len": tt,
                 "train_steps_timed": steps, "quick": args.quick, "reps": args.reps},
      "sampling": sampling_res,
      "sampling_speedup": sampling_res["hf"]["seconds_best"] / sampling_res["jax"]["seconds_best"],
      "greedy_identical_rows": f"{same}/4",
      "training": {"engage_jax_s_per_step": jax_train_s, "transformers_s_per_step": hf_train_s,
                   "engage_jax_tokens_per_s": tb * tt / jax_train_s, "transformers_tokens_per_s": tb * tt / hf_train_s},
      "training_speedup": hf_train_s / jax_train_s,
      "training_lora_r16": {"engage_jax_s_per_step": lora_train_s, "engage_jax_tokens_per_s": tb * tt / lora_train_s,
                            "speedup_vs_full": jax_train_s / lora_train_s},
      "machine": _results.machine(),
  }
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
