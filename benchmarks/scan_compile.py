"""Compile time of the decoder stack: the SmolLM2 SFT step and the 8B plan's lowering.

    .venv/bin/python benchmarks/scan_compile.py --before DIR --out F   # DIR: a checkout of the old code
    .venv/bin/python benchmarks/scan_compile.py --one sft               # this checkout only, one figure

Two programs, each in a fresh subprocess (nothing cached in memory, the persistent compilation cache
off), run once per side and interleaved before/after `--reps` times, with `loadavg` beside each:
- `sft`: the trainer's SFT step (`memory_plan.train_program`: `train.loop.make_train_step` of
  `lm_loss_fn`, AdamW) on SmolLM2-135M's architecture (read from the GGUF header) at the
  esconv_smollm2 config's batch and length, one CPU device: seconds to lower and to compile;
- `sft1`: the same step with 1 layer instead of 30 (the depth-independent floor of `sft`);
- `plan8b`: `memory_plan.make_plan(configs/esconv_llama3_8b.py, compile_mode="none")` on its
  (1, 16, 1) mesh of 16 host CPU devices: seconds to lower the train steps (remat off and on) and
  the sampler's prefill / decode (lowering only, as the brief asks);
- `sample`: `sampling.generate` on SmolLM2-135M's architecture (random weights, seed 0), B=32
  prompts of 100 tokens, 32 new tokens, greedy: the first call (compile + run) and the median of
  two more (steady), and the first row's tokens (the same on both sides).
Writes benchmarks/results/scan_compile.json (or --out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402


def run_sft(layers: int = 0) -> dict:
  import jax
  from engage_jax import memory_plan, sharding
  from engage_jax.models import gguf
  sys.path.insert(0, str(ROOT / "configs"))
  import esconv_smollm2
  cfg = esconv_smollm2.get_config()
  mc = gguf.open_gguf(gguf.smollm2_135m_instruct()).model_config()
  if layers:
    mc = dataclasses.replace(mc, num_hidden_layers=layers)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  import jax.numpy as jnp
  t0 = time.perf_counter()
  prog = memory_plan.train_program(cfg, mc, mesh, train_batch=int(cfg.sft.batch_size),
                                   seq_len=int(cfg.data.max_len), remat=bool(cfg.model.remat),
                                   dtype=jnp.float32, param_dtype=jnp.float32)
  lowered = prog.lower()
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {"layers": mc.num_hidden_layers, "batch": int(cfg.sft.batch_size), "seq_len": int(cfg.data.max_len),
          "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)}


def run_plan8b() -> dict:
  from engage_jax import memory_plan
  sys.path.insert(0, str(ROOT / "configs"))
  import esconv_llama3_8b
  cfg = esconv_llama3_8b.get_config()
  t0 = time.perf_counter()
  plan = memory_plan.make_plan(cfg, (1, 16, 1), compile_mode="none")
  t = plan.details["timings"]
  return {"layers": plan.details["model"]["config"]["num_hidden_layers"], "lower_train_s": t["lower_train"],
          "lower_sampling_s": t["lower_sampling"], "total_s": round(time.perf_counter() - t0, 2)}


def run_sample() -> dict:
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from engage_jax import sampling
  from engage_jax.models import CausalLM, gguf
  mc = gguf.open_gguf(gguf.smollm2_135m_instruct()).model_config()
  model = CausalLM(mc, dtype=jnp.float32, rngs=nnx.Rngs(0))
  prompts = [list(map(int, row)) for row in np.random.RandomState(0).randint(1, mc.vocab_size, (32, 100))]
  run = lambda: sampling.generate(model, prompts, max_new_tokens=32, temperature=0.0, stop_token_ids=())
  t0 = time.perf_counter()
  out = run()
  first = time.perf_counter() - t0
  steady = []
  for _ in range(2):
    t0 = time.perf_counter()
    run()
    steady.append(time.perf_counter() - t0)
  return {"layers": mc.num_hidden_layers, "first_call_s": round(first, 2), "steady_s": round(statistics.median(steady), 2),
          "total_s": round(first, 2), "row0_tokens": out[0]}


PROGRAMS = {"sft": run_sft, "sft1": lambda: run_sft(layers=1), "plan8b": run_plan8b, "sample": run_sample}


def one(which: str, code_root: str) -> dict:
  """Runs `which` in a fresh interpreter with `code_root` first on sys.path; its JSON line."""
  env = dict(os.environ, PYTHONPATH=code_root, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
  if which == "plan8b":
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
  load0 = os.getloadavg()[0]
  out = subprocess.run([sys.executable, __file__, "--one", which], env=env, capture_output=True, text=True,
                       check=True).stdout.strip().splitlines()[-1]
  return dict(json.loads(out), loadavg_1m_start=load0, loadavg_1m_end=os.getloadavg()[0])


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--one", choices=tuple(PROGRAMS), help="run one program here and print its JSON")
  ap.add_argument("--before", help="root of a checkout of the code before the change")
  ap.add_argument("--programs", default="sft,sft1,plan8b,sample")
  ap.add_argument("--reps", type=int, default=1)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan_compile.json"))
  args = ap.parse_args(argv)
  if args.one:
    print(json.dumps(PROGRAMS[args.one]()))
    return {}
  sides = {"after": str(ROOT)}
  if args.before:
    sides = {"before": os.path.abspath(args.before), **sides}
  runs = {w: {s: [] for s in sides} for w in args.programs.split(",")}
  for _ in range(args.reps):
    for which in runs:
      for side, root in sides.items():
        runs[which][side].append(one(which, root))
        print(which, side, runs[which][side][-1], flush=True)
  summary = {w: {s: statistics.median(r["total_s"] for r in rs) for s, rs in sides_.items()}
             for w, sides_ in runs.items()}
  return _results.write({"machine": _results.machine(), "median_total_s": summary, "runs": runs}, args.out)


if __name__ == "__main__":
  main()
