"""Compile time of the decoder stack: the SmolLM2 SFT step and the 8B plan's lowering.

    .venv/bin/python benchmarks/scan_compile.py --before DIR --out F   # DIR: a checkout of the old code
    .venv/bin/python benchmarks/scan_compile.py --one sft               # this checkout only, one figure

Two programs, each in a fresh subprocess (nothing cached in memory, the persistent compilation cache
off), run once per side and interleaved before/after `--reps` times, with `loadavg` beside each:
- `sft`: the trainer's SFT step (`memory_plan.train_program`: `train.loop.make_train_step` of
  `lm_loss_fn`, AdamW) on SmolLM2-135M's architecture (read from the GGUF header) at the
  esconv_smollm2 config's batch and length, one CPU device: seconds to lower and to compile;
- `plan8b`: `memory_plan.make_plan(configs/esconv_llama3_8b.py, compile_mode="none")` on its
  (1, 16, 1) mesh of 16 host CPU devices: seconds to lower the train steps (remat off and on) and
  the sampler's prefill / decode (lowering only, as the brief asks).
Writes benchmarks/results/scan_compile.json (or --out).
"""
from __future__ import annotations

import argparse
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


def run_sft() -> dict:
  import jax
  from engage_jax import memory_plan, sharding
  from engage_jax.models import gguf
  sys.path.insert(0, str(ROOT / "configs"))
  import esconv_smollm2
  cfg = esconv_smollm2.get_config()
  mc = gguf.open_gguf(gguf.smollm2_135m_instruct()).model_config()
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
  ap.add_argument("--one", choices=("sft", "plan8b"), help="run one program here and print its JSON")
  ap.add_argument("--before", help="root of a checkout of the code before the change")
  ap.add_argument("--programs", default="sft,plan8b")
  ap.add_argument("--reps", type=int, default=1)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan_compile.json"))
  args = ap.parse_args(argv)
  if args.one:
    print(json.dumps(run_sft() if args.one == "sft" else run_plan8b()))
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
  key = {"sft": "total_s", "plan8b": "total_s"}
  summary = {w: {s: statistics.median(r[key[w]] for r in rs) for s, rs in sides_.items()}
             for w, sides_ in runs.items()}
  return _results.write({"machine": _results.machine(), "median_total_s": summary, "runs": runs}, args.out)


if __name__ == "__main__":
  main()
