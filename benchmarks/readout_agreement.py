"""Expected-outcome readout vs sampled, parsed readouts with the real SmolLM2-135M-Instruct (P4G).

  python benchmarks/readout_agreement.py --steps=20 --samples=64 \
      --out=benchmarks/results/readout_agreement_smollm2.json

1. The instruct model as it is: on fixed chats, how much of its answer distribution the canonical
   lines `outcome_line(x)` cover (`outcome_mass`), the expected readout, and the mean of N sampled,
   parsed answers (T = 1) with its 95% interval.
2. After a short full fine-tune on the P4G training chats' outcome answers (the simulator's SFT
   target for the outcome question, the chat cut to its last turns): the same comparison on held-out
   (test split) chats. The readout is meant for an SFT'd simulator; (1) shows what it reads out
   for one that never learned the lines.
Writes a JSON with the figures, the timings and /proc/loadavg.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax.numpy as jnp
import numpy as np

from engage_jax import models, readout, rewards, rollout
from engage_jax.data import chat, p4g, sft
from engage_jax.models.gguf import smollm2_135m_instruct
from engage_jax.sampling import SamplingParams
from engage_jax.tokenizer import ChatTokenizer
from engage_jax.train.sft import train_sft

KEYS = ("age", "sex", "income", "ideology", "benevolence", "universalism", "care")


def _cut(d, turns: int):
  d.turns = d.turns[-turns:]
  d.condition = {k: d.condition[k] for k in KEYS if k in d.condition}
  return d


def _outcome_msgs(d):
  return chat.simulator_messages("p4g", d.condition, d.turns, mark_end=True) + [
      {"role": "user", "content": chat.OUTCOME_REQUEST}]


def compare(sim, chats, amounts, samples: int, seed: int) -> list[dict]:
  t = time.perf_counter()
  expected = readout.expected_donations(sim, chats, amounts)
  t_readout = time.perf_counter() - t
  t = time.perf_counter()
  texts = [t for i, d in enumerate(chats) for t in sim.generate([_outcome_msgs(d)] * samples, seed + i)]  # one call per chat: bounded memory
  t_sample = time.perf_counter() - t
  canon = {chat.outcome_line(a) for a in amounts}
  out = []
  for i, (d, e) in enumerate(zip(chats, expected)):
    tx = texts[samples * i:samples * (i + 1)]
    v = np.array([x for x in (rewards.parse_donation(s) for s in tx) if x is not None])
    half = float(1.96 * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    mean = float(v.mean()) if v.size else float("nan")
    out.append({"chat": d.id, "expected": e["expected_donation"], "outcome_mass": e["outcome_mass"],
                "sampled_mean": mean, "sampled_ci95": [mean - half, mean + half], "parsed": int(v.size),
                "canonical": sum(s in canon for s in tx), "samples": samples,
                "inside_ci95": bool(abs(mean - e["expected_donation"]) <= half),
                "examples": tx[:4], "readout_seconds": t_readout / len(chats), "sample_seconds": t_sample / len(chats)})
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "p4g"))
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--samples", type=int, default=64)
  ap.add_argument("--chats", type=int, default=4)
  ap.add_argument("--out", default="benchmarks/results/readout_agreement_smollm2.json")
  args = ap.parse_args()
  t0 = time.perf_counter()
  gguf = smollm2_135m_instruct()
  tok = ChatTokenizer.load(gguf)
  model = models.from_pretrained(gguf, dtype=jnp.float32)
  train = [_cut(d, 2) for d in p4g.load_split(args.data, "train") if d.outcome.get("donation") is not None]
  test = [_cut(d, 2) for d in p4g.load_split(args.data, "test")][:args.chats]
  amounts = readout.outcome_amounts(train, rewards.DONATION_CAP)
  sim = rollout.Speaker(model, tok, max_prompt_len=192, sampling=SamplingParams(max_new_tokens=12, temperature=1.0))
  result = {"model": os.path.basename(gguf), "amounts": list(amounts), "loadavg_start": open("/proc/loadavg").read().split()[:3]}
  result["untrained"] = compare(sim, test, amounts, args.samples, seed=1)
  msgs = [_outcome_msgs(d) + [{"role": "assistant", "content": chat.outcome_line(d.outcome["donation"])}] for d in train]
  exs = [e for m in msgs for e in sft.examples_from_messages(tok, m, 192, targets=[len(m) - 1], kind="simulator")]
  arrays = sft.pad_to_buckets(exs, tok.pad_id, 192, buckets=(192,))
  t = time.perf_counter()
  model, summary = train_sft(model, arrays, dict(steps=args.steps, batch_size=args.batch, learning_rate=args.lr,
                                                 warmup_steps=2, progress=False, log_every=5, eval_at_start=False,
                                                 checkpoint_every=0, max_len=192), tempfile.mkdtemp())
  result["sft"] = {"steps": args.steps, "batch": args.batch, "learning_rate": args.lr, "examples": len(exs),
                   "seconds": time.perf_counter() - t, "last_loss": summary["last_train"]["loss"]}
  result["fine_tuned"] = compare(sim, test, amounts, args.samples, seed=2)
  result["seconds"] = time.perf_counter() - t0
  result["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  for k in ("untrained", "fine_tuned"):
    for r in result[k]:
      print(k, r["chat"], f"expected {r['expected']:.3f} sampled {r['sampled_mean']:.3f} "
            f"[{r['sampled_ci95'][0]:.3f}, {r['sampled_ci95'][1]:.3f}] mass {r['outcome_mass']:.3f} "
            f"canonical {r['canonical']}/{r['samples']} inside {r['inside_ci95']}")


if __name__ == "__main__":
  main()
