"""SmolLM2-135M-Instruct (the real GGUF checkpoint): engage_jax vs transformers in the same run.

    .venv/bin/python benchmarks/smollm2_vs_hf.py            # B=32 sampling, B=8 x 256 training
    .venv/bin/python benchmarks/smollm2_vs_hf.py --quick    # smoke run

Both sides load the same GGUF (engage_jax through `models.from_pretrained`, transformers through its
own GGUF loader), fp32, torch with 2 threads.
- sampling: B=32 chat prompts left-cut to 128 tokens, 48 new tokens, T=0.7, top-p 0.9 (no stop
  token, so both write 48 tokens a row); the first call of each side is timed apart (engage_jax:
  compile included, `compile_s.sampling` = first call - median), then `--reps` interleaved timings
  (medians); plus a greedy parity check (4 prompts x 32 tokens, token-identical expected).
- training: full fine-tuning on B=8 x 256 tokens (AdamW, loss on every token): engage_jax's own SFT
  (`train.sft.train_sft`, the pipeline's code) vs a torch loop. `training_speedup` compares whole
  3-step calls, compile included (a fresh process would pay it: the persistent compilation cache is
  off here), each side's call timed `--reps` times interleaved (medians; engage_jax re-traces per
  call because every call builds a new model and optimizer); `compile_s.sft_step` = engage_jax's
  first call - 3 x its steady step; `training_steady_speedup` compares steady steps (engage_jax's
  from the loop's per-step callback inside one call, without its compile, set-up or final
  checkpoint). Both with the scanned layers (the default) and with
  `scan_layers=False` (`*_unrolled`: slower compile, faster step). Also LoRA r=16 on all seven
  projections (`models.lora`, base frozen, unrolled), steady step.
Every timing records the 1-minute loadavg beside it (`loadavg`): claim speeds from an idle machine.
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
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "smollm2_vs_hf.json"))
  args = ap.parse_args(argv)
  import jax.numpy as jnp
  import torch
  import transformers
  from engage_jax import compile_cache, models, sampling
  from engage_jax.data.sft import Example
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  from engage_jax.train import sft as sft_train
  from engage_jax.train.config import TrainConfig

  compile_cache.enable("off")  # compile time is part of what is measured
  torch.set_num_threads(2)
  loads = []
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

  def timed(fn, what: str) -> float:
    loads.append({"what": what, "loadavg_1m": os.getloadavg()[0]})
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

  first = {"jax": timed(run_jax, "sampling jax first"), "hf": timed(run_hf, "sampling hf first")}
  t = {"jax": [], "hf": []}
  for _ in range(args.reps):
    for k, fn in (("jax", run_jax), ("hf", run_hf)):
      t[k].append(timed(fn, f"sampling {k}"))
  sampling_res = {k: {"seconds_first_call": first[k], "seconds_best": min(v), "seconds_median": statistics.median(v),
                      "tokens_per_s": batch * new / statistics.median(v)} for k, v in t.items()}

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
  hf.train()
  x = torch.tensor(rows)

  def torch_call():  # a fresh optimizer and `steps` steps, as a new training run would
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    for _ in range(steps):
      opt.zero_grad()
      hf(x, labels=x).loss.backward()
      opt.step()

  def steady_s(m, tag: str, what: str) -> float:
    """Seconds per step over `steps` steps in the middle of one train_sft call of `steps + 2`, from
    the loop's per-step callback: the first step (compile) and the last (which writes the final
    checkpoint before its callback) are outside."""
    marks = []
    loads.append({"what": what, "loadavg_1m": os.getloadavg()[0]})
    sft_train.train_sft(m, exs * (steps + 3), TrainConfig.from_any(dict(cfg, steps=steps + 2)),
                        os.path.join(tmp, tag), on_step=lambda *_: marks.append(time.perf_counter()))
    return (marks[-2] - marks[0]) / steps

  with tempfile.TemporaryDirectory() as tmp:
    calls = {"jax": [], "jax_unrolled": [], "hf": []}
    fresh = {k: [models.from_pretrained(path, dtype=jnp.float32, scan_layers=(k == "jax")) for _ in range(args.reps)]
             for k in ("jax", "jax_unrolled")}  # loading is not timed
    for i in range(args.reps):
      for k in ("jax", "jax_unrolled"):
        calls[k].append(timed(lambda: sft_train.train_sft(
            fresh[k][i], exs * (steps + 1), TrainConfig.from_any(dict(cfg, steps=steps)),  # noqa: B023
            os.path.join(tmp, f"call{k}{i}")), f"training {k} call"))  # noqa: B023
      calls["hf"].append(timed(torch_call, "training torch call"))
    fresh.clear()
    jax_train_s = steady_s(model, "timed", "training jax steady")
    unrolled_train_s = steady_s(models.from_pretrained(path, dtype=jnp.float32, scan_layers=False), "utimed",
                                "training jax_unrolled steady")
    # the same step with LoRA r=16 on all seven projections (adapters trained, base frozen), unrolled layers
    from flax import nnx
    from engage_jax.models import lora
    lmodel = lora.apply_lora(models.from_pretrained(path, dtype=jnp.float32, scan_layers=False),
                             lora.LoraConfig(rank=16, alpha=32), rngs=nnx.Rngs(0))
    lora_train_s = steady_s(lmodel, "ltimed", "training lora steady")
  hf_train_s = timed(torch_call, "training torch steady") / steps
  call = {k: statistics.median(v) for k, v in calls.items()}
  res = {
      "config": {"model": name, "params": model.config.num_params, "sampling_batch": batch, "prompt_len": plen,
                 "max_new_tokens": new, "temperature": 0.7, "top_p": 0.9, "train_batch": tb, "train_len": tt,
                 "train_steps_timed": steps, "quick": args.quick, "reps": args.reps},
      "sampling": sampling_res,
      "sampling_speedup": sampling_res["hf"]["seconds_median"] / sampling_res["jax"]["seconds_median"],
      "greedy_identical_rows": f"{same}/4",
      "training": {"engage_jax_s_per_step": jax_train_s, "engage_jax_unrolled_s_per_step": unrolled_train_s,
                   "transformers_s_per_step": hf_train_s,
                   "engage_jax_tokens_per_s": tb * tt / jax_train_s, "transformers_tokens_per_s": tb * tt / hf_train_s},
      "training_calls_s": {k: {"median": call[k], "all": v} for k, v in calls.items()},
      "training_speedup": call["hf"] / call["jax"],
      "training_speedup_unrolled": call["hf"] / call["jax_unrolled"],
      "training_steady_speedup": hf_train_s / jax_train_s,
      "training_steady_speedup_unrolled": hf_train_s / unrolled_train_s,
      "compile_s": {"sampling": first["jax"] - sampling_res["jax"]["seconds_median"],
                    "sft_step": call["jax"] - steps * jax_train_s,
                    "sft_step_unrolled": call["jax_unrolled"] - steps * unrolled_train_s},
      "loadavg": loads,
      "training_lora_r16": {"engage_jax_s_per_step": lora_train_s, "engage_jax_tokens_per_s": tb * tt / lora_train_s,
                            "speedup_vs_full_unrolled": unrolled_train_s / lora_train_s},
      "machine": _results.machine(),
  }
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
