"""DPO training throughput: engage_jax's jit train step vs TRL's DPOTrainer (PyTorch CPU), same run.

    python benchmarks/dpo_vs_trl.py            # ~30M Llama, 8 pairs x (128 prompt + 64 completion)
    python benchmarks/dpo_vs_trl.py --quick    # tiny smoke run

Same work on both sides: reference log-probs PRECOMPUTED (TRL `precompute_ref_log_probs=True`,
engage_jax caches them before training), so a step is one policy forward + backward over the
2B = 16 concatenated sequences of 192 tokens, the sigmoid DPO loss and an AdamW update (fp32,
clipping at 1.0). Both sides see exactly the same token counts: 8 pairs, prompt 128 tokens,
completions 64 tokens (63 words + EOS for TRL), no padding. Timed steps exclude compilation /
warm-up steps and the reference pass. tokens/s counts all tokens of the forward (2 x 8 x 192 per
step). torch runs with 2 threads; XLA uses the machine's cores (2 here).

Writes benchmarks/results/dpo_vs_trl.json: {"jax": {...}, "trl": {...}, "speedup": jax/trl}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _results

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FULL = dict(layers=6, d=512, heads=8, kv=2, ffn=1408, vocab=8192, pairs=8, prompt=128, completion=64,
            warmup=2, steps=6)
QUICK = dict(layers=2, d=128, heads=4, kv=2, ffn=256, vocab=1024, pairs=4, prompt=32, completion=16,
             warmup=1, steps=2)


def model_config(s):
  from engage_jax.models import ModelConfig
  return ModelConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
                     num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                     num_key_value_heads=s["kv"], max_position_embeddings=1024)


def data(s, seed=0):
  rng = np.random.default_rng(seed)
  v = s["vocab"]
  prompt = rng.integers(10, v, (s["pairs"], s["prompt"])).astype(np.int32)
  chosen = rng.integers(10, v, (s["pairs"], s["completion"])).astype(np.int32)
  rejected = rng.integers(10, v, (s["pairs"], s["completion"])).astype(np.int32)
  chosen[:, -1] = rejected[:, -1] = 2  # EOS
  return prompt, chosen, rejected


def bench_jax(s):
  import jax
  from flax import nnx
  from engage_jax import sharding as shd
  from engage_jax.models import CausalLM
  from engage_jax.train import dpo_loss, loop, reference

  model = CausalLM(model_config(s), rngs=nnx.Rngs(0))
  prompt, chosen, rejected = data(s)
  batch = {"prompt_ids": prompt, "prompt_mask": np.ones_like(prompt), "chosen_ids": chosen,
           "chosen_mask": np.ones_like(chosen), "rejected_ids": rejected, "rejected_mask": np.ones_like(rejected)}
  buckets = {(s["prompt"], s["completion"]): dict(batch, pair_index=np.arange(s["pairs"], dtype=np.int32))}
  t = time.perf_counter()
  ref_c, ref_r = reference.compute_ref_logps(model, buckets, s["pairs"])
  ref_s = time.perf_counter() - t
  batch.update(ref_chosen=ref_c, ref_rejected=ref_r, row_weight=np.ones(s["pairs"], np.float32))
  cfg = loop.TrainConfig(learning_rate=1e-5, warmup_steps=0, batch_size=s["pairs"])
  mesh = shd.make_mesh(data=1, devices=jax.devices()[:1])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, sched = loop.make_optimizer(cfg, 100)
  params, opt, p_sh, o_sh = loop.init_sharded(tx, params, mesh)
  mb = loop.stack_micro(batch, 1)
  step = loop.make_train_step(dpo_loss.dpo_loss_fn(graphdef, rest, 0.1, "sigmoid", 0.0, 0.0), tx, sched, mesh,
                              p_sh, o_sh, mb)
  t = time.perf_counter()
  for _ in range(s["warmup"]):
    params, opt, m = step(params, opt, mb)
  jax.block_until_ready(m)
  warm_s = time.perf_counter() - t
  t = time.perf_counter()
  losses = []
  for _ in range(s["steps"]):
    params, opt, m = step(params, opt, mb)
    losses.append(float(m["loss"]))
  dt = (time.perf_counter() - t) / s["steps"]
  tokens = 2 * s["pairs"] * (s["prompt"] + s["completion"])
  return {"step_s": dt, "tokens_per_s": tokens / dt, "tokens_per_step": tokens,
          "compile_and_warmup_s": warm_s, "ref_logps_s": ref_s, "losses": losses,
          "params": int(sum(x.size for x in jax.tree.leaves(params)))}


def bench_trl(s, threads: int):
  import torch
  import transformers
  import trl
  from datasets import Dataset
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  v = s["vocab"]
  vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
  vocab.update({f"w{i}": i for i in range(3, v)})
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
  prompt, chosen, rejected = data(s)
  words = lambda ids: " ".join(f"w{int(i)}" for i in ids)
  reps = s["warmup"] + s["steps"] + 1
  ds = Dataset.from_dict({"prompt": [words(p) for p in prompt] * reps,
                          "chosen": [" " + words(c[:-1]) for c in chosen] * reps,      # + EOS added by TRL
                          "rejected": [" " + words(r[:-1]) for r in rejected] * reps})
  cfg = model_config(s).to_hf_dict()
  cfg.pop("torch_dtype", None)
  model = LlamaForCausalLM(LlamaConfig(**cfg))
  times = []

  class Timer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      times.append(time.perf_counter() - self.t)

  out = tempfile.mkdtemp()
  args = trl.DPOConfig(output_dir=out, per_device_train_batch_size=s["pairs"], max_steps=s["warmup"] + s["steps"],
                       learning_rate=1e-5, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                       max_length=None, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                       dataloader_num_workers=0, max_grad_norm=1.0, lr_scheduler_type="constant",
                       bf16=False, fp16=False, gradient_checkpointing=False, disable_tqdm=True, seed=0)
  trainer = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                           callbacks=[Timer()])
  sample = trainer.train_dataset[0]
  assert len(sample["prompt_ids"]) == s["prompt"] and len(sample["chosen_ids"]) == s["completion"], \
      (len(sample["prompt_ids"]), len(sample["chosen_ids"]))
  trainer.train()
  dt = float(np.mean(times[s["warmup"]:]))
  tokens = 2 * s["pairs"] * (s["prompt"] + s["completion"])
  return {"step_s": dt, "tokens_per_s": tokens / dt, "tokens_per_step": tokens, "threads": threads,
          "step_times_s": times, "trl": trl.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny config, 2 timed steps (smoke test)")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                "dpo_vs_trl.json"))
  a = ap.parse_args(argv)
  s = QUICK if a.quick else FULL
  res = {"config": dict(s, quick=a.quick), "ref_logps": "precomputed on both sides"}
  res["jax"] = bench_jax(s)
  print(f"engage_jax: {res['jax']['tokens_per_s']:.0f} tokens/s ({res['jax']['step_s'] * 1e3:.0f} ms/step)", flush=True)
  res["trl"] = bench_trl(s, a.threads)
  print(f"TRL DPOTrainer: {res['trl']['tokens_per_s']:.0f} tokens/s ({res['trl']['step_s'] * 1e3:.0f} ms/step)", flush=True)
  res["speedup"] = res["jax"]["tokens_per_s"] / res["trl"]["tokens_per_s"]
  res["machine"] = _results.machine()  # after both sides ran: the versions of what they imported
  print(f"speedup engage_jax / TRL: {res['speedup']:.2f}x (target >= 1.5x)")
  out = a.out if not a.quick else a.out.replace(".json", "_quick.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=1)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
