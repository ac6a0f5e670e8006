"""Where a SmolLM2 SFT step's time goes on this CPU: each piece of the step jitted and timed alone.

    .venv/bin/python benchmarks/sft_step_profile.py            # B=8 x 256, fp32, full fine-tuning
    .venv/bin/python benchmarks/sft_step_profile.py --quick    # B=2 x 64

Pieces (medians of --reps calls after a warm-up call; every figure with the 1-minute loadavg):
  matmul_gflops            an fp32 (and bf16) [B*T, 576] x [576, 1536] matmul: this CPU's practical peak
  layer_{attn,mlp}_{fwd,fwd_bwd}_ms   one decoder layer's attention / MLP, forward and forward+backward
  layers_{fwd,fwd_bwd}_s   the 30 layers (no head), scanned and unrolled (`scan_layers`)
  head_loss_fwd_bwd_s      final norm + tied output projection + token cross-entropy over all B*T positions
  adamw_s                  one AdamW update of all 135M parameters (with the step's non-finite guard)
  step_s                   the trainer's whole jitted step (`train.loop.make_train_step` + `lm_loss_fn`)
`gflops_achieved` divides the step's model FLOPs (6 x non-embedding params x tokens + the head and
attention) by step_s. Writes benchmarks/results/sft_step_profile.json (or --out).
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


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_step_profile.json"))
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from engage_jax import models
  from engage_jax import sharding as shd
  from engage_jax.logprobs import token_logps
  from engage_jax.models import llama
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.train import loop
  from engage_jax.train.config import TrainConfig

  b, t = (2, 64) if args.quick else (8, 256)
  res: dict = {"config": {"batch": b, "length": t, "reps": args.reps, "dtype": "float32"}, "seconds": {}, "loadavg": {}}

  def timed(name: str, fn, *a) -> float:
    jax.block_until_ready(fn(*a))
    runs = []
    for _ in range(args.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*a))
      runs.append(time.perf_counter() - t0)
    res["seconds"][name] = statistics.median(runs)
    res["loadavg"][name] = os.getloadavg()[0]
    print(f"{name}: {res['seconds'][name]:.4f} s (load {res['loadavg'][name]:.2f})", flush=True)
    return res["seconds"][name]

  n = b * t
  for dt in (jnp.float32, jnp.bfloat16):
    x, w = jnp.ones((n, 576), dt), jnp.ones((576, 1536), dt)
    s = timed(f"matmul_{jnp.dtype(dt).name}", jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32)), x, w)
    res.setdefault("matmul_gflops", {})[jnp.dtype(dt).name] = 2 * n * 576 * 1536 / s / 1e9

  path = smollm2_135m_instruct()
  model = models.from_pretrained(path, dtype=jnp.float32)
  cfg = model.config
  ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (b, t)).astype(np.int32))
  mask = jnp.ones((b, t), bool)
  cos, sin = llama.rope_cos_sin(jnp.broadcast_to(jnp.arange(t), (b, t)), llama.rope_inv_freq(cfg))
  x0 = jax.random.normal(jax.random.key(0), (b, t, cfg.hidden_size))
  sq = lambda f: jax.jit(jax.grad(lambda s, x: jnp.sum(f(s, x) ** 2), argnums=(0, 1)))

  layer = model.layer_slice(0)
  for part in ("self_attn", "mlp"):
    g, s = nnx.split(getattr(layer, part))
    f = ((lambda s, x: nnx.merge(g, s)(x, cos, sin, mask)[0]) if part == "self_attn"   # noqa: B023
         else (lambda s, x: nnx.merge(g, s)(x)))                                     # noqa: B023
    name = "attn" if part == "self_attn" else "mlp"
    timed(f"layer_{name}_fwd", jax.jit(f), s, x0)
    timed(f"layer_{name}_fwd_bwd", sq(f), s, x0)

  for scan in (True, False):
    model.scan_layers = scan
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def layers(p, x):
      m = nnx.merge(graphdef, p, rest)  # noqa: B023
      return m.run_layers(m.layers, 0, x, cos, sin, mask)[0]

    tag = "scanned" if scan else "unrolled"
    timed(f"layers_fwd_{tag}", jax.jit(layers), params, x0)
    timed(f"layers_fwd_bwd_{tag}", sq(layers), params, x0)

  model.scan_layers = True
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def head_loss(p, h):
    m = nnx.merge(graphdef, p, rest)
    return -jnp.mean(token_logps(m.logits(m.norm(h))[:, :-1], ids[:, 1:]))

  timed("head_loss_fwd_bwd", jax.jit(jax.grad(head_loss, argnums=(0, 1))), params, x0)

  tcfg = TrainConfig.from_any(dict(learning_rate=1e-5, warmup_steps=0, batch_size=b, max_len=t))
  mesh = shd.make_mesh(data=1, devices=jax.devices()[:1])
  tx, schedule = loop.make_optimizer(tcfg, 100)
  batch = loop.stack_micro({"input_ids": np.asarray(ids), "loss_mask": np.ones((b, t), np.int32),
                            "attention_mask": np.ones((b, t), np.int32)}, 1)
  for scan in (True, False):
    model.scan_layers = scan
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(jnp.copy, params)  # the step donates them; the model keeps its own
    params, opt, p_sh, o_sh = loop.init_sharded(tx, params, mesh)
    step = loop.make_train_step(loop.lm_loss_fn(graphdef, rest), tx, schedule, mesh, p_sh, o_sh, batch)
    placed = shd.place_batch(batch, mesh, accum=True)
    state = [params, opt]

    def donated_step():  # as the trainer calls it: params and optimizer state donated, the new ones kept
      state[0], state[1], m = step(state[0], state[1], placed)  # noqa: B023
      return m

    timed(f"step_{'scanned' if scan else 'unrolled'}", donated_step)
    params, opt = state
  grads = jax.tree.map(lambda p: p * 1e-3, params)

  def adam(p, o, g):
    def update(p, o):
      u, o = tx.update(g, o, p)
      return jax.tree.map(lambda a, d: a + d, p, u), o
    return jax.lax.cond(jnp.isfinite(jax.tree.leaves(g)[0].sum()), update, lambda p, o: (p, o), p, o)

  timed("adamw", jax.jit(adam), params, opt, grads)

  d, v, nl = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
  body = cfg.num_params - v * d
  flops = 6 * n * body + 6 * n * d * v + 3 * 4 * nl * b * cfg.num_attention_heads * t * t * (d // cfg.num_attention_heads)
  sec = res["seconds"]
  res["step_model_tflop"] = flops / 1e12
  res["gflops_achieved"] = {k: flops / sec[f"step_{k}"] / 1e9 for k in ("scanned", "unrolled")}
  res["share_of_unrolled_step"] = {"layers_fwd_bwd": sec["layers_fwd_bwd_unrolled"] / sec["step_unrolled"],
                                   "head_loss_fwd_bwd": sec["head_loss_fwd_bwd"] / sec["step_unrolled"],
                                   "adamw": sec["adamw"] / sec["step_unrolled"]}
  res["machine"] = _results.machine()
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
