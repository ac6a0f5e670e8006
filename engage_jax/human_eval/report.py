"""The human block in the run's report: report.json `extra.human` and a report.md section.

report.json's top-level keys are a public contract (engage_jax.report.REPORT_KEYS; additions go
under "extra"), so the block lives at `extra.human`; it is also written alone to
DIR/human_eval/summary.json. The report.md section sits between two HTML comments and is replaced,
not appended, on every `launch/rate.py --report`. Rerunning the pipeline's report stage rewrites
both files without it: run --report again.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping

from engage_jax.fileio import atomic_write_json, atomic_write_text
from engage_jax import report as run_report

BEGIN, END = "<!-- human_eval:begin -->", "<!-- human_eval:end -->"


def _f(x, digits: int = 2) -> str:
  return "—" if x is None else f"{x:.{digits}f}"


def render_markdown(block: Mapping) -> str:
  """The report.md section of a human block."""
  lines = [BEGIN, "## Human evaluation (blinded A/B chats)", "",
           f"- raters: **{block['n_raters']}**, rated sessions (rater × condition): **{block['n_sessions']}** "
           f"over {block['n_conditions']} held-out conditions",
           f"- excluded sessions: {block['excluded']['count']} ("
           + ", ".join(f"{k}: {v}" for k, v in block["excluded"]["reasons"].items())
           + f"); not started: {block['not_started']}"]
  lat = block.get("reply_latency_ms")
  if lat:
    lines.append(f"- reply latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms ({lat['n']} replies)")
  if block["items"]:
    lines += ["", f"p: {block['p_value_test']}.", "",
              "| item | scale | SFT mean [95% CI] | DPO mean [95% CI] | DPO − SFT [95% CI] | p | Spearman ρ vs simulator (n) |",
              "|---|---|---|---|---|---:|---|"]
    for key, it in block["items"].items():
      sp = block["spearman"].get(key)
      rho = f"{_f(sp['rho'])} ({sp['n']})" if sp else "—"
      lo, hi = it["scale"]
      lines.append(f"| {it['label']} | {lo:g}–{hi:g} | {_f(it['sft']['mean'])} [{_f(it['sft']['ci95'][0])}, "
                   f"{_f(it['sft']['ci95'][1])}] | {_f(it['dpo']['mean'])} [{_f(it['dpo']['ci95'][0])}, "
                   f"{_f(it['dpo']['ci95'][1])}] | {it['diff_mean']:+.2f} [{_f(it['diff_ci95'][0])}, "
                   f"{_f(it['diff_ci95'][1])}] | {it['p_value']:.4g} | {rho} |")
  pref = block.get("preference")
  if pref:
    lines += ["", f"- preferred DPO in **{pref['dpo']}/{pref['n']}** sessions ({100 * pref['dpo_rate']:.1f}%, "
              f"95% CI [{100 * pref['ci95'][0]:.1f}%, {100 * pref['ci95'][1]:.1f}%]), p = {pref['p_value']:.4g} "
              f"({pref['test']})"]
  if not block["items"]:
    lines += ["", "No rated sessions yet."]
  lines += [END, ""]
  return "\n".join(lines)


def _replace_section(md: str, section: str) -> str:
  if BEGIN in md and END in md:
    head, rest = md.split(BEGIN, 1)
    tail = rest.split(END, 1)[1].lstrip("\n")
    return head + section + tail
  return md.rstrip("\n") + "\n\n" + section


def write(workdir: str | Path, block: Mapping) -> dict[str, str]:
  """Adds `block` to DIR/report.json (extra.human) and DIR/report.md when they exist, and writes
  DIR/human_eval/summary.json. Returns {name: path} of what was written."""
  wd = Path(workdir)
  out = {}
  summary = wd / "human_eval" / "summary.json"
  atomic_write_json(summary, dict(block))
  out["summary.json"] = str(summary)
  rj = wd / "report.json"
  if rj.is_file():
    rep = run_report.load_report(str(rj))
    rep.setdefault("extra", {})["human"] = json.loads(json.dumps(block))
    run_report.validate_report(rep)
    atomic_write_text(rj, json.dumps(rep, indent=2, sort_keys=False) + "\n")
    out["report.json"] = str(rj)
  md = wd / "report.md"
  text = md.read_text(encoding="utf-8") if md.is_file() else ""
  atomic_write_text(md, _replace_section(text, render_markdown(block)))
  out["report.md"] = str(md)
  return out
