"""Corpus statistics: `python -m engage_jax.data.stats [--data_dir ../shared/data]`.

Prints dialogues per split, turns, non-empty condition fields, ESConv engagement / intensity
coverage, P4G donation count, median, share > 0 and outliers (> 2 before clipping).

Errors (a missing directory or file, a bad record, an empty split) are one line on stderr,
`error: <what> (<where>)`, with exit code 2; ENGAGE_DEBUG=1 keeps the traceback.
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections import Counter
from pathlib import Path

from engage_jax import errors
from engage_jax.data import esconv, p4g
from engage_jax.errors import InputError

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _condition_counts(dialogues) -> str:
  c = Counter(k for d in dialogues for k, v in d.condition.items() if str(v).strip())
  return ", ".join(f"{k} {n}" for k, n in sorted(c.items()))


def esconv_stats(data_dir) -> list[str]:
  lines = ["ESConv"]
  for split in esconv.SPLITS:
    ds = esconv.load_split(data_dir, split)
    if not ds:
      raise InputError(f"the {split} split has no dialogues", str(esconv.esconv_dir(data_dir) / f"{split}.txt"))
    turns = sum(len(d.turns) for d in ds)
    eng = sum(bool(d.outcome.get("engaged")) for d in ds)
    fin = sum("final_emotion_intensity" in d.outcome for d in ds)
    lines.append(f"  {split}: {len(ds)} dialogues, {turns} turns (merged), engaged {eng} "
                 f"({eng / max(len(ds), 1):.1%}), final_emotion_intensity present {fin}")
    lines.append(f"    condition non-empty: {_condition_counts(ds)}")
  return lines


def p4g_stats(data_dir) -> list[str]:
  ds = p4g.load(data_dir)
  if not ds:
    raise InputError("no dialogues", str(p4g.p4g_dir(data_dir)))
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


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not usage + message
    raise InputError(message, "command line")


def main(argv=None) -> None:
  ap = _Parser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default=os.environ.get("ENGAGE_DATA_DIR", str(DEFAULT_DATA_DIR)))
  args = ap.parse_args(argv)
  if not Path(args.data_dir).is_dir():
    raise InputError("no such data directory", f"--data_dir={args.data_dir}")
  lines = esconv_stats(args.data_dir) + p4g_stats(args.data_dir)
  print(f"data_dir: {Path(args.data_dir).resolve()}")
  print("\n".join(lines))


if __name__ == "__main__":
  errors.guard(main)
