"""Expected readout against the sampled, parsed outcome on a finished P4G workdir's SFT evaluation.

  python benchmarks/readout_vs_sampled_workdir.py WORKDIR [--out=benchmarks/results/readout_vs_sampled.json]

WORKDIR: a sandbox P4G pipeline run with --config.reward.readout=expected (its eval_sft dialogues
carry the sampled answer beside the expected one). The readout is recomputed over the same chats with
the corpus amounts only and with the corpus amounts + the $0.05 grid (`readout.outcome_amounts`).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engage_jax import evaluate as ev, models, readout, rollout
from engage_jax.data import sandbox
from engage_jax.sampling import SamplingParams
from engage_jax.tokenizer import ChatTokenizer


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("workdir")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  wd = args.workdir
  cfg = json.load(open(f"{wd}/config.json"))
  ds = ev.load_dialogues(f"{wd}/eval_sft/dialogues.jsonl")
  tok = ChatTokenizer.load(f"{wd}/tokenizer")
  ss = cfg["eval"]["simulator_sampling"]
  sim = rollout.Speaker(models.from_pretrained(f"{wd}/sft_simulator/hf"), tok, cfg["eval"]["max_prompt_len"],
                        sampling=SamplingParams(**ss))
  cap = cfg["reward"]["donation_cap"]
  corpus = sandbox.generate("p4g", cfg["data"]["sandbox_train"], cfg["seed"])
  s = ev.summarize(ev.sampled_view(ds))
  out = {"workdir": wd, "chats": len(ds), "loadavg": open("/proc/loadavg").read().split()[:3],
         "sampled": {"mean": s["reward_mean"], "ci95": s["ci95"], "n": s["n"]}}
  for name, am in (("corpus", readout.outcome_amounts(corpus, cap, step=0)), ("corpus_grid", readout.outcome_amounts(corpus, cap))):
    t = time.perf_counter()
    e = readout.expected_donations(sim, ds, am, cap)
    v = np.array([x["expected_donation"] for x in e])
    m = np.array([x["outcome_mass"] for x in e])
    out[name] = {"candidates": len(am), "mean": float(v.mean()), "ci95": list(ev.bootstrap_ci(v)),
                 "mass_mean": float(m.mean()), "mass_min": float(m.min()), "seconds": time.perf_counter() - t}
  print(json.dumps(out, indent=1))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
