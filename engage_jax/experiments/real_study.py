"""The real-data study's results (issue 24): docs/results/real_<task>_smollm2.{json,md,png} from one
finished pipeline workdir (config eval.heldout_simulator on).

  python -m engage_jax.experiments.real_study --workdir=W --out=docs/results/real_p4g_smollm2 \\
      --command="python launch/pipeline.py --config=configs/p4g_smollm2.py --workdir=W"

`summarize(workdir, command)` reads report.json, stages.json, config.json, the evaluation chats, the
SFT metrics and the search summary, and returns (all numbers from those files):
  sft, dpo              {"mean", "ci95", "n", "mean_turns", "words_per_agent_turn"} by the search's simulator
  p_value               paired sign-flip test per condition (report.json)
  heldout_simulator     {"sft", "dpo" (same blocks), "p_value", "n_paired_conditions"}
  sampled_readout       P4G with reward.readout "expected": the sampled, parsed outcome (the paper's metric)
  tree_variance_share, trees_with_variance, pairs, pair_margin_mean (chosen - rejected value)
  readout, stage_seconds, validation_loss {role: {"base", "sft"}} (held-out dialogues' target
  turns, before and after SFT), dpo_heldout (held-out pair accuracy / margin per epoch, if any),
  transcripts (3 conditions: the SFT and the DPO chat of the same condition and seed), command,
  machine.
`render(summary)` is the markdown; `plot(summary, path)` the figure (reward by both simulators).
"""
from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engage_jax import evaluate
from engage_jax.data.dialogue import AGENT, Dialogue
from engage_jax.fileio import atomic_write_json, atomic_write_text
from engage_jax.pipeline import STAGES

N_TRANSCRIPTS = 3


def generated_agent_turns(d: Dialogue) -> list[str]:
  """The agent turns the evaluated agent wrote: the last outcome["num_turns"] agent turns (the
  opening's turns come from the corpus)."""
  texts = [t.text for t in d.turns if t.role == AGENT]
  n = int(d.outcome.get("num_turns", len(texts)))
  return texts[len(texts) - n:] if n else []


def words_per_agent_turn(dialogues: Sequence[Dialogue]) -> float:
  turns = [len(t.split()) for d in dialogues for t in generated_agent_turns(d)]
  return float(np.mean(turns)) if turns else 0.0


def model_block(dialogues: Sequence[Dialogue], seed: int = 0) -> dict:
  s = evaluate.summarize(dialogues, seed=seed)
  return {"mean": s["reward_mean"], "ci95": s["ci95"], "n": s["n"], "mean_turns": s["mean_turns"],
          "words_per_agent_turn": words_per_agent_turn(dialogues)}


def validation_loss(run_dir: Path) -> dict | None:
  """{"base": the loss before SFT (step 0), "sft": after} on the held-out dialogues' target turns,
  from `run_dir`/metrics.jsonl's eval records; None without them."""
  path = run_dir / "metrics.jsonl"
  if not path.is_file():
    return None
  evals = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == "eval"]
  if not evals:
    return None
  first, last = min(evals, key=lambda r: r["step"]), max(evals, key=lambda r: r["step"])
  return {"base": float(first["loss"]), "sft": float(last["loss"]), "steps": int(last["step"])}


def transcripts(sft: Sequence[Dialogue], dpo: Sequence[Dialogue], n: int = N_TRANSCRIPTS) -> list[dict]:
  """The first `n` dialogue ids present in both runs: the SFT and DPO chat of each."""
  by_id = {d.id: d for d in dpo}
  out = []
  for d in sft:
    if d.id in by_id and len(out) < n:
      out.append({"id": d.id, "condition": d.condition,
                  **{name: {"reward": x.outcome.get("reward"),
                            "turns": [{"role": t.role, "text": t.text} for t in x.turns]}
                     for name, x in (("sft", d), ("dpo", by_id[d.id]))}})
  return out


def summarize(workdir: str | Path, command: str = "") -> dict:
  wd = Path(workdir)
  rep = json.loads((wd / "report.json").read_text())
  cfg = json.loads((wd / "config.json").read_text())
  seed = int(cfg.get("seed", 0))
  load = lambda *p: evaluate.load_dialogues(str(wd.joinpath(*p)))
  sft, dpo = load("eval_sft", "dialogues.jsonl"), load("eval_dpo", "dialogues.jsonl")
  out = {"task": rep["task"], "sft": model_block(sft, seed), "dpo": model_block(dpo, seed),
         "p_value": rep["p_value"], "pairs": rep["pairs"]}
  held = rep["extra"].get("heldout_simulator")
  if held:
    hs, hd = load("eval_sft", "heldout", "dialogues.jsonl"), load("eval_dpo", "heldout", "dialogues.jsonl")
    out["heldout_simulator"] = {"sft": model_block(hs, seed), "dpo": model_block(hd, seed),
                                "p_value": held["p_value"], "n_paired_conditions": held["n_paired_conditions"]}
  if "sampled_readout" in rep["extra"]:
    sr = rep["extra"]["sampled_readout"]
    out["sampled_readout"] = {k: {"mean": sr[k]["reward_mean"], "ci95": sr[k]["ci95"], "n": sr[k]["n"]}
                              for k in ("sft", "dpo")} | {"p_value": sr["p_value"]}
  search = json.loads((wd / "search" / "summary.json").read_text())
  out.update(tree_variance_share=search.get("tree_variance_share"), trees_with_variance=search.get("trees_with_variance"),
             trees=search.get("trees"), expansions=search.get("expansions"))
  s = rep["extra"].get("search", {})
  if "chosen_values_mean" in s and "rejected_values_mean" in s:
    out["pair_margin_mean"] = s["chosen_values_mean"] - s["rejected_values_mean"]
  out["readout"] = cfg.get("reward", {}).get("readout", "sampled")
  order = {name: i for i, name in enumerate(STAGES)}
  out["stage_seconds"] = dict(sorted(rep["wall_seconds"].items(), key=lambda kv: order.get(kv[0], len(order))))
  out["validation_loss"] = {role: v for role in ("agent", "simulator", "heldout_simulator")
                            if (v := validation_loss(wd / f"sft_{role}")) is not None}
  curve = wd / "dpo_agent" / "heldout_curve.json"
  if curve.is_file():
    out["dpo_heldout"] = json.loads(curve.read_text())
  if rep["extra"].get("rounds"):
    out["rounds"] = rep["extra"]["rounds"]
  out["transcripts"] = transcripts(sft, dpo)
  out["command"] = command
  out["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()}
  return out


def _fmt(task: str, x: float) -> str:
  return f"${x:.2f}" if task == "p4g" else f"{100 * x:.1f}%"


def render(s: Mapping) -> str:
  task = s["task"]
  f = lambda x: _fmt(task, x)
  lines = [f"# Real-data study: SmolLM2-135M-Instruct on {'P4G' if task == 'p4g' else 'ESConv'}", "",
           f"Command: `{s['command']}`", "",
           "| simulator | model | n | reward | 95% CI | mean agent turns | words per agent turn |",
           "|---|---|---:|---:|---|---:|---:|"]
  sims = [("search's", s)] + ([("held-out", s["heldout_simulator"])] if "heldout_simulator" in s else [])
  for label, block in sims:
    for m in ("sft", "dpo"):
      b = block[m]
      lines.append(f"| {label} | {m.upper()} | {b['n']} | {f(b['mean'])} | [{f(b['ci95'][0])}, {f(b['ci95'][1])}] | "
                   f"{b['mean_turns']:.2f} | {b['words_per_agent_turn']:.1f} |")
  lines += ["", f"- paired p (DPO vs SFT, per condition): search's simulator {s['p_value']:.4g}" +
            (f", held-out simulator {s['heldout_simulator']['p_value']:.4g}" if "heldout_simulator" in s else "")]
  if "sampled_readout" in s:
    sr = s["sampled_readout"]
    lines.append(f"- sampled, parsed outcome (the paper's metric): SFT {f(sr['sft']['mean'])}, DPO {f(sr['dpo']['mean'])}, "
                 f"p {sr['p_value']:.4g} (reward above: readout {s['readout']})")
  share = s.get("tree_variance_share")
  lines.append(f"- search: {s.get('trees')} trees, {s.get('expansions')} expansions, "
               + (f"{100 * share:.0f}% with reward variance, " if share is not None else "")
               + f"{s['pairs']} pairs" + (f", mean chosen - rejected value {f(s['pair_margin_mean'])}"
                                          if "pair_margin_mean" in s else ""))
  for role, v in s.get("validation_loss", {}).items():
    lines.append(f"- validation loss ({role} targets of held-out dialogues): base {v['base']:.3f} -> SFT {v['sft']:.3f} "
                 f"({v['steps']} steps)")
  if s.get("dpo_heldout"):
    lines.append(f"- DPO held-out pairs curve: `{json.dumps(s['dpo_heldout'].get('curve', s['dpo_heldout']))[:400]}`")
  lines += ["", "| stage | seconds |", "|---|---:|"] + [f"| {k} | {v:.0f} |" for k, v in s["stage_seconds"].items()]
  lines += [f"| total | {sum(s['stage_seconds'].values()):.0f} |", "", "## Transcripts (same condition and seed)", ""]
  for t in s["transcripts"]:
    lines.append(f"<details><summary>{t['id']}</summary>\n")
    for m in ("sft", "dpo"):
      lines.append(f"**{m.upper()}** (reward {t[m]['reward']})\n")
      lines += [f"> **{turn['role']}:** {turn['text']}  " for turn in t[m]["turns"]] + [""]
    lines.append("</details>\n")
  return "\n".join(lines)


def plot(s: Mapping, path: str | Path) -> None:
  import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib (the figure only))
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency: matplotlib)
  sims = [("search's simulator", s)] + ([("held-out simulator", s["heldout_simulator"])] if "heldout_simulator" in s else [])
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for i, (_label, block) in enumerate(sims):
    for j, m in enumerate(("sft", "dpo")):
      b = block[m]
      x = i * 3 + j
      ax.bar(x, b["mean"], color=("tab:gray", "tab:blue")[j], label=m.upper() if i == 0 else None)
      ax.errorbar(x, b["mean"], yerr=[[b["mean"] - b["ci95"][0]], [b["ci95"][1] - b["mean"]]], color="k", capsize=4)
  ax.set_xticks([i * 3 + 0.5 for i in range(len(sims))], [label for label, _ in sims])
  ax.set_ylabel("mean donation ($)" if s["task"] == "p4g" else "engagement rate")
  ax.legend()
  ax.set_title(f"SmolLM2-135M, {s['task'].upper()}: SFT vs DPO (95% CI)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(workdir: str | Path, out_prefix: str | Path, command: str = "") -> dict:
  s = summarize(workdir, command)
  out = Path(out_prefix)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_json(out.with_suffix(".json"), s)
  atomic_write_text(out.with_suffix(".md"), render(s))
  plot(s, out.with_suffix(".png"))
  return s


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True, help="path prefix: writes .json, .md and .png")
  ap.add_argument("--command", default="", help="the command that made the workdir (recorded)")
  a = ap.parse_args(argv)
  write(a.workdir, a.out, a.command)


if __name__ == "__main__":
  main()
