"""SFT target tokens per step and per second: per-turn examples (before) vs multi-target windows.

    .venv/bin/python benchmarks/sft_target_tokens.py            # SmolLM2, ESConv, B=4 x 256
    .venv/bin/python benchmarks/sft_target_tokens.py --quick    # smoke run (fewer dialogues/steps)

Same model (SmolLM2-135M-Instruct GGUF, fp32, full fine-tuning), same batch shape (the
esconv_smollm2 config: batch 4, max_len 256, one bucket of 256), the trainer's own jitted step
(`train.loop.make_train_step` with `lm_loss_fn`, AdamW), one compiled program for both sides. The
only difference is the examples, built from the same ESConv train dialogues:
- before: `data/sft.py` as it was at commit 5d53af3 (read with `git show`), called as the pipeline
  called it (`build_arrays(..., pack=True)`: one example per target turn unless the whole chat
  fits max_len);
- after: today's `data.sft.build_arrays` (windows, every target turn in a window supervised).
Batches come from `data.sft.BatchIterator` (seed 0) of each side and role; after a warm-up step
(compile), `--rounds` rounds each time one step of: before-agent, after-agent, before-simulator,
after-simulator (interleaved, so load changes hit both sides alike). Target tokens per step are
also counted over a whole epoch of each side (no timing), for these dialogues and for the
config's 400. Both roles' batches go through one model (throughput only, nothing is learned).
Writes benchmarks/results/sft_target_tokens.json (or --out), with loadavg before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402

BEFORE = "5d53af3"  # the last commit with per-turn SFT examples


def old_sft_module(commit: str = BEFORE) -> types.ModuleType:
  """`engage_jax/data/sft.py` as it was at `commit` (needs the git history)."""
  try:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:engage_jax/data/sft.py"],
                         check=True, capture_output=True, text=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise SystemExit(f"benchmarks/sft_target_tokens.py: cannot read engage_jax/data/sft.py at commit "
                     f"{commit} (needs a git clone with history): {e}") from e
  mod = types.ModuleType("sft_before")
  mod.__file__ = f"{commit}:engage_jax/data/sft.py"
  sys.modules[mod.__name__] = mod  # dataclasses look their module up
  exec(compile(src, mod.__file__, "exec"), mod.__dict__)
  return mod


def epoch_counts(arrays: dict, batch: int) -> dict:
  """Rows, target tokens and steps of one epoch of bucketed arrays at this batch size."""
  from engage_jax.data import sft
  rows = sum(len(a["input_ids"]) for a in arrays.values())
  tokens = int(sum(a["loss_mask"].sum() for a in arrays.values()))
  steps = sft.BatchIterator(arrays, batch).steps_per_epoch
  positions = sum(-(-len(a["input_ids"]) // batch) * batch * T for T, a in arrays.items())
  return {"rows": rows, "target_tokens": tokens, "steps_per_epoch": steps,
          "target_tokens_per_step": tokens / steps, "target_fraction_of_positions": tokens / positions}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--dialogues", type=int, default=40, help="ESConv train dialogues (the issue's reduced run: 40)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_target_tokens.json"))
  args = ap.parse_args(argv)
  if args.quick:
    args.dialogues, args.rounds = 8, 1
  load_before = os.getloadavg()
  import jax
  import jax.numpy as jnp

  from engage_jax import models
  from engage_jax import sharding as shd
  from engage_jax.data import esconv, sft
  from engage_jax.models import lora
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  from engage_jax.train import loop
  from engage_jax.train.config import TrainConfig

  data_dir = Path(os.environ.get("ENGAGE_DATA_DIR", ROOT.parent / "shared" / "data"))
  batch, max_len = 4, 256                      # configs/esconv_smollm2.py: sft.batch_size, data.max_len
  buckets = sft.default_buckets(max_len, 256)  # its sft.min_bucket: one bucket
  old = old_sft_module()
  path = smollm2_135m_instruct()
  tok = ChatTokenizer.load(path)
  train = esconv.load_split(data_dir, "train")
  dialogues = train[:args.dialogues]

  arrays, counts = {}, {}
  for role in ("agent", "simulator"):
    t0 = time.perf_counter()
    arrays[("before", role)] = old.build_arrays(dialogues, tok, role, max_len, buckets, pack=True)[0]
    t1 = time.perf_counter()
    arrays[("after", role)] = sft.build_arrays(dialogues, tok, role, max_len, buckets)[0]
    t2 = time.perf_counter()
    for side, s in (("before", t1 - t0), ("after", t2 - t1)):
      counts[f"{side}/{role}"] = dict(epoch_counts(arrays[(side, role)], batch), build_s=s)
  counts_400 = {}
  if not args.quick:  # the esconv_smollm2 config's corpus (data.max_train_dialogues = 400): counts only
    for role in ("agent", "simulator"):
      counts_400[f"before/{role}"] = epoch_counts(old.build_arrays(train[:400], tok, role, max_len, buckets,
                                                                   pack=True)[0], batch)
      counts_400[f"after/{role}"] = epoch_counts(sft.build_arrays(train[:400], tok, role, max_len, buckets)[0],
                                                 batch)

  model = models.from_pretrained(path, dtype=jnp.float32)
  cfg = TrainConfig.from_any(dict(learning_rate=1e-6, warmup_steps=0, batch_size=batch, max_len=max_len,
                                  min_bucket=256, steps=1000, progress=False))
  mesh = shd.make_mesh(data=1, devices=jax.devices()[:1])
  graphdef, params, frozen, rest = lora.split_trainable(model)
  assert frozen is None
  tx, schedule = loop.make_optimizer(cfg, cfg.steps)
  params, opt_state, p_sh, o_sh = loop.init_sharded(tx, params, mesh)
  streams = {k: iter(sft.BatchIterator(v, batch, seed=0)) for k, v in arrays.items()}
  first = loop.stack_micro(next(iter(sft.BatchIterator(arrays[("after", "agent")], batch))), 1)
  step = loop.make_train_step(loop.lm_loss_fn(graphdef, rest), tx, schedule, mesh, p_sh, o_sh, first)

  def run(key):
    nonlocal params, opt_state
    b = loop.stack_micro(next(streams[key]), 1)
    t0 = time.perf_counter()
    params, opt_state, m = step(params, opt_state, shd.place_batch(b, mesh, accum=True))
    m = jax.device_get(m)
    return time.perf_counter() - t0, float(m["tokens"]), float(m["loss"])

  t0 = time.perf_counter()
  run(("after", "agent"))
  compile_s = time.perf_counter() - t0
  timed = {k: [] for k in arrays}
  for _ in range(args.rounds):
    for role in ("agent", "simulator"):
      for side in ("before", "after"):
        timed[(side, role)].append(run((side, role)))
  load_after = os.getloadavg()

  steps = {}
  for (side, role), rows in timed.items():
    sec = [r[0] for r in rows]
    tok_ = [r[1] for r in rows]
    steps[f"{side}/{role}"] = {"seconds_per_step": sec, "target_tokens_per_step": tok_,
                               "median_s_per_step": statistics.median(sec),
                               "target_tokens_per_s": sum(tok_) / sum(sec)}
  ratios = {}
  for role in ("agent", "simulator"):
    b, a = counts[f"before/{role}"], counts[f"after/{role}"]
    sb, sa = steps[f"before/{role}"], steps[f"after/{role}"]
    ratios[role] = {"target_tokens_per_step_epoch": a["target_tokens_per_step"] / b["target_tokens_per_step"],
                    "target_tokens_per_s_timed": sa["target_tokens_per_s"] / sb["target_tokens_per_s"],
                    "s_per_step_timed": sa["median_s_per_step"] / sb["median_s_per_step"]}
  res = {
      "config": {"model": os.path.basename(path), "dtype": "float32", "batch": batch, "max_len": max_len,
                 "buckets": list(buckets), "dialogues": args.dialogues, "rounds": args.rounds,
                 "before": f"data/sft.py at {BEFORE}, build_arrays(pack=True)", "quick": args.quick},
      "epoch": counts, "epoch_400_dialogues": counts_400, "timed_steps": steps,
      "after_over_before": ratios, "compile_s": compile_s,
      "machine": _results.machine(loadavg_before=list(load_before), loadavg_after=list(load_after)),
  }
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
