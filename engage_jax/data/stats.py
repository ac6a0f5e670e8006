"""Corpus statistics: `python -m engage_jax.data.stats [--data_dir ../shared/data]`.

Prints dialogues per split, turns, non-empty condition fields, ESConv engagement / intensity
coverage, P4G donation count, median, share > 0 and outliers (> 2 before clipping).
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections import Counter
from pathlib import Path

from engage_jax.data import esconv, p4g

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _condition_counts(dialogues) -> str:
  c = Counter(k for d in dialogues for k, v in d.condition.items() if str(v).strip())
  return ", ".join(f"{k} {n}" for k, n in sorted(c.items()))


def esconv_stats(data_dir) -> list[str]:
  lines = ["ESConv"]
  for split in esconv.SPLITS:
    ds = esconv.load_split(data_dir, split)
    turns = sum(len(d.turns) for d in ds)
    eng = sum(bool(d.outcome.get("engaged")) for d in ds)
    fin = sum("final_emotion_intensity" in d.outcome for d in ds)
    lines.append(f"  {split}: {len(ds)} dialogues, {turns} turns (merged), engaged {eng} "
                 f"({eng / max(len(ds), 1):.1%}), final_emotion_intensity present {fin}")
    lines.append(f"    condition non-empty: {_condition_counts(ds)}")
  return lines


def p4g_stats(data_dir) -> list[str]:
  ds = p4g.load(data_dir)
  don = [d.outcome["donation"] for d in ds]
  raw = [d.outcome["donation_raw"] for d in ds]
  splits = Counter(p4g.split_of(d.id) for d in ds)
  cond = Counter(len(d.condition) for d in ds)
  return [
      "P4G",
      f"  dialogues: {len(ds)} (train {splits['train']}, valid {splits['valid']}, "
      f"test {splits['test']}), turns (merged) {sum(len(d.turns) for d in ds)}",
      f"  donations: {len(don)} present, missing {len(ds) - len(don)}; median {statistics.median(raw):.2f}, "
      f"share > 0 {sum(x > 0 for x in raw) / len(raw):.1%}, raw mean {statistics.mean(raw):.2f}, "
      f"clipped mean {statistics.mean(don):.3f}, raw > 2: {sum(x > 2 for x in raw)}",
      f"  persona fields per dialogue: {dict(sorted(cond.items()))}",
      f"  condition non-empty: {_condition_counts(ds)}",
  ]


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default=os.environ.get("ENGAGE_DATA_DIR", str(DEFAULT_DATA_DIR)))
  args = ap.parse_args(argv)
  print(f"data_dir: {Path(args.data_dir).resolve()}")
  print("\n".join(esconv_stats(args.data_dir) + p4g_stats(args.data_dir)))


if __name__ == "__main__":
  main()
