"""Conversation KV cache on vs off: SmolLM2-135M-Instruct chats on real ESConv starts.

    .venv/bin/python benchmarks/rollout_cache.py --out benchmarks/results/rollout_cache.json
    .venv/bin/python benchmarks/rollout_cache.py --quick --out /tmp/rollout_cache_quick.json

`rollout.simulate` with the SmolLM2 GGUF as both agent and simulator (one model, two Speakers),
greedy, 16 ESConv test starts (condition + the seeker's opening) x 5 agent turns (--quick: 4 x 2),
`max_new_tokens` 40 as configs/esconv_smollm2.py, `max_prompt_len` 1024 so that 5 turns fit
without truncation (truncated prompts fall back to a fresh prefill). The modes run interleaved,
off, on, off, on: the first pair includes compilation (`speedup_cold`), the second reuses the
compiled programs (`speedup`, the whole-rollout wall time ratio off / on). Writes `speedup`,
`greedy_identical` (every chat token-identical, cache on vs off, in both pairs), the tokens
prefilled per agent turn (agent + simulator calls of that round) in each mode, per-call seconds,
and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402


def _starts(data_dir: str, n: int):
  from engage_jax.data import esconv
  from engage_jax.data.dialogue import USER, Dialogue
  out = []
  for d in esconv.load_split(data_dir, "test"):
    first_user = next((i for i, t in enumerate(d.turns) if t.role == USER), None)
    if first_user is not None:
      out.append(Dialogue(f"bench-{d.id}", "es", list(d.turns[:first_user + 1]), dict(d.condition)))
    if len(out) == n:
      break
  return out


class _Timed:
  """Wraps a Speaker's `generate_ids`: records per call (role, seconds, prompt tokens, tokens
  prefilled)."""

  def __init__(self, speaker, role: str, log: list):
    self.speaker, self.role, self.log = speaker, role, log
    self.inner = speaker.generate_ids
    speaker.generate_ids = self

  def __call__(self, prompts, seed, row_seeds=None):
    t0 = time.perf_counter()
    out = self.inner(prompts, seed, row_seeds)
    sec = time.perf_counter() - t0
    total = sum(len(p) for p in prompts)
    prefilled = self.speaker.cache.history[-1].prefilled_tokens if self.speaker.kv_cache else total
    self.log.append({"role": self.role, "rows": len(prompts), "seconds": round(sec, 3),
                     "prompt_tokens": total, "prefilled_tokens": prefilled})
    return out


def run_once(model, tok, starts, *, kv: bool, turns: int, new: int, max_prompt_len: int):
  from engage_jax import rollout
  from engage_jax.sampling import SamplingParams
  params = SamplingParams(max_new_tokens=new, temperature=0.0)
  agent = rollout.Speaker(model, tok, max_prompt_len, sampling=params, kv_cache=kv)
  sim = rollout.Speaker(model, tok, max_prompt_len, sampling=params, kv_cache=kv)
  log: list = []
  _Timed(agent, "agent", log)
  _Timed(sim, "simulator", log)
  t0 = time.perf_counter()
  done = rollout.simulate(agent, sim, starts, task="es", max_agent_turns=turns, seed=0)
  sec = time.perf_counter() - t0
  per_turn, cur = [], None
  for call in log:
    if call["role"] == "agent":
      cur = {"agent": call["prefilled_tokens"], "simulator": 0, "prompt_tokens": call["prompt_tokens"]}
      per_turn.append(cur)
    elif cur is not None:
      cur["simulator"] = call["prefilled_tokens"]
      cur["prompt_tokens"] += call["prompt_tokens"]
  return {"seconds": round(sec, 2), "calls": log, "prefilled_per_turn": per_turn,
          "prefilled_total": sum(c["prefilled_tokens"] for c in log),
          "prompt_tokens_total": sum(c["prompt_tokens"] for c in log)}, [[t.text for t in d.turns] for d in done]


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--chats", type=int, default=None)
  ap.add_argument("--turns", type=int, default=None)
  ap.add_argument("--new", type=int, default=40)
  ap.add_argument("--max-prompt-len", type=int, default=1024)
  ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rollout_cache.json"))
  args = ap.parse_args(argv)
  chats = args.chats or (4 if args.quick else 16)
  turns = args.turns or (2 if args.quick else 5)
  import jax.numpy as jnp
  from engage_jax import compile_cache, models
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  compile_cache.enable()
  load_before = list(os.getloadavg())
  path = smollm2_135m_instruct()
  tok = ChatTokenizer.load(path)
  model = models.from_pretrained(path, dtype=jnp.float32)
  starts = _starts(args.data, chats)
  kw = dict(turns=turns, new=args.new, max_prompt_len=args.max_prompt_len)
  runs, texts = {}, {}
  for rep in ("cold", "warm"):
    for kv in (False, True):
      name = f"{'on' if kv else 'off'}_{rep}"
      runs[name], texts[name] = run_once(model, tok, starts, kv=kv, **kw)
      print(name, runs[name]["seconds"], "s", flush=True)
  identical = texts["on_cold"] == texts["off_cold"] and texts["on_warm"] == texts["off_warm"]
  same_chats = sum(a == b for a, b in zip(texts["on_warm"], texts["off_warm"]))
  res = {
      "benchmark": "rollout_cache",
      "model": "SmolLM2-135M-Instruct Q4_1 GGUF, fp32 compute, agent = simulator weights",
      "chats": chats, "agent_turns": turns, "max_new_tokens": args.new,
      "max_prompt_len": args.max_prompt_len, "greedy": True,
      "speedup": round(runs["off_warm"]["seconds"] / runs["on_warm"]["seconds"], 3),
      "speedup_cold": round(runs["off_cold"]["seconds"] / runs["on_cold"]["seconds"], 3),
      "greedy_identical": bool(identical),
      "chats_identical_warm": f"{same_chats}/{chats}",
      "prefill_fraction_on": round(runs["on_warm"]["prefilled_total"] / runs["on_warm"]["prompt_tokens_total"], 4),
      "turns_per_chat": [len(t) for t in texts["on_warm"]],
      "sample_chat": texts["on_warm"][0],
      "runs": runs,
      "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
      "machine": _results.machine(),
      "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
  }
  return _results.write(res, args.out)


if __name__ == "__main__":
  main()
