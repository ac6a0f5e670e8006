"""The search's preference data as a `datasets` dataset in TRL's conversational formats.

    python launch/export.py --workdir=W --dataset_out=DIR [--format=dpo|kto]
    datasets.load_from_disk(DIR)   # -> trl.DPOTrainer / trl.KTOTrainer(train_dataset=...)

dpo: one row per stepwise pair of the search (engage_jax/search/pairs.py; the files the pipeline's
DPO trains on, read by `train.pair_data.load_pairs`): `prompt` (the agent's view of the history,
a list of {"role", "content"}), `chosen` and `rejected` (one assistant message each), and the
search's columns (`DPO_SEARCH_COLUMNS`: the pair's `meta`).

kto: one row per *scored child* (visits >= the search's `pair_min_visits`, a value) of every
expanded node with at least two scored children, from the tree files
`W/search/trees/shard-*.json`: `prompt` (the node's history), `completion` (the child's agent
turn), `label` True (desirable) when the child's value is above the mean of its siblings' values,
False when below; a child whose value equals that mean (within 1e-9 of the values' scale) is
dropped. So a node with one clear winner among k children gives one desirable and k - 1
undesirable rows even when no value gap reaches the pairs' margin. The search columns are
`KTO_SEARCH_COLUMNS`.

DIR gets the dataset (`Dataset.save_to_disk`) and a dataset card `README.md` (task, row counts and
counts per label, the workdir config's fingerprint, the command, the columns).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from engage_jax.data.chat import agent_messages
from engage_jax.data.dialogue import Dialogue, Turn
from engage_jax.errors import InputError
from engage_jax.train import pair_data

FORMATS = ("dpo", "kto")
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
_I, _F, _S = datasets.Value("int64"), datasets.Value("float64"), datasets.Value("string")

# column -> (feature, doc)
DPO_SEARCH_COLUMNS = {
    "tree_id": (_I, "index of the search tree in its run (one tree per condition)"),
    "condition_id": (_S, "id of the condition (root dialogue) the tree searched"),
    "task": (_S, "es | p4g"),
    "node": (_I, "the parent node whose children are compared"),
    "depth": (_I, "depth of that node (search steps before the choice)"),
    "chosen_node": (_I, "node index of the chosen child"),
    "rejected_node": (_I, "node index of the rejected child"),
    "chosen_value": (_F, "mean backed-up value (future reward) of the chosen child"),
    "rejected_value": (_F, "mean backed-up value of the rejected child"),
    "chosen_visits": (_I, "visits of the chosen child"),
    "rejected_visits": (_I, "visits of the rejected child"),
    "margin": (_F, "chosen_value - rejected_value (>= the search's margin)"),
    "chosen_strategy": (_S, "strategy label of the chosen turn, if known"),
    "rejected_strategy": (_S, "strategy label of the rejected turn, if known"),
}
KTO_SEARCH_COLUMNS = {
    "tree_id": DPO_SEARCH_COLUMNS["tree_id"],
    "condition_id": DPO_SEARCH_COLUMNS["condition_id"],
    "task": DPO_SEARCH_COLUMNS["task"],
    "node": (_I, "the parent node (the prompt's history ends there)"),
    "depth": (_I, "depth of the parent node"),
    "child_node": (_I, "node index of the completion's child"),
    "value": (_F, "mean backed-up value (future reward) of the child"),
    "siblings_mean": (_F, "mean value of the other scored children of the same node"),
    "margin": (_F, "value - siblings_mean (> 0: label True)"),
    "visits": (_I, "visits of the child"),
    "strategy": (_S, "strategy label of the completion, if known"),
}
TRL_COLUMNS = {
    "dpo": {"prompt": (MESSAGES, "the agent's view of the conversation so far (system, user, assistant messages)"),
            "chosen": (MESSAGES, "the preferred agent turn: one assistant message"),
            "rejected": (MESSAGES, "the dispreferred agent turn: one assistant message")},
    "kto": {"prompt": (MESSAGES, "the agent's view of the conversation so far (system, user, assistant messages)"),
            "completion": (MESSAGES, "one agent turn: one assistant message"),
            "label": (datasets.Value("bool"), "True: desirable (value above its siblings' mean); False: undesirable")},
}
SEARCH_COLUMNS = {"dpo": DPO_SEARCH_COLUMNS, "kto": KTO_SEARCH_COLUMNS}
TIE_TOLERANCE = 1e-9


def features(fmt: str) -> datasets.Features:
  """The typed columns of a `fmt` dataset: TRL's, then the search's."""
  cols = {**TRL_COLUMNS[fmt], **SEARCH_COLUMNS[fmt]}
  return datasets.Features({k: f for k, (f, _) in cols.items()})


def dpo_dataset(pairs: Sequence[dict]) -> datasets.Dataset:
  """Pairs (dicts with prompt/chosen/rejected + meta) → a typed dpo dataset, one row each, in order."""
  cols: dict[str, list] = {k: [p[k] for p in pairs] for k in TRL_COLUMNS["dpo"]}
  for k in DPO_SEARCH_COLUMNS:
    cols[k] = [(p.get("meta") or {}).get(k) for p in pairs]
  return datasets.Dataset.from_dict(cols, features=features("dpo"))


def _is_node_row(stats: dict) -> bool:
  return all(k in stats for k in ("root", "agent_text", "user_text", "parent", "value", "visits", "depth"))


def kto_rows(tree: dict, tree_id: int, min_visits: int = 1) -> list[dict]:
  """The kto rows of one tree's stats (`Trees.stats`: parent, depth, visits, value and the node
  texts), nodes in index order, children in index order (see the module docstring)."""
  root = Dialogue.from_json(tree["root"])
  parent, value, visits = tree["parent"], tree["value"], tree["visits"]
  kids: dict[int, list[int]] = {}
  for c in range(1, len(parent)):
    if visits[c] >= min_visits and value[c] is not None:
      kids.setdefault(int(parent[c]), []).append(c)
  out = []
  for node in sorted(kids):
    group = kids[node]
    if len(group) < 2:
      continue
    vals = np.asarray([value[c] for c in group], np.float64)
    scale = max(1.0, float(np.max(np.abs(vals))))
    path, n = [], node
    while n > 0:
      path.append(n)
      n = int(parent[n])
    turns = list(root.turns)
    for m in reversed(path):
      turns += [Turn("agent", tree["agent_text"][m], tree["agent_strategy"][m]), Turn("user", tree["user_text"][m])]
    prompt = agent_messages(root.task, turns)
    for i, c in enumerate(group):
      others = float((vals.sum() - vals[i]) / (len(group) - 1))
      gap = float(vals[i]) - others
      if abs(gap) <= TIE_TOLERANCE * scale:
        continue
      out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": tree["agent_text"][c]}],
                  "label": gap > 0, "tree_id": tree_id, "condition_id": root.id, "task": root.task,
                  "node": node, "depth": int(tree["depth"][node]), "child_node": c, "value": float(vals[i]),
                  "siblings_mean": others, "margin": gap, "visits": int(visits[c]),
                  "strategy": tree["agent_strategy"][c]})
  return out


def read_trees(search_dir: str | os.PathLike) -> list[tuple[int, dict]]:
  """(tree id, stats) of every tree in `search_dir/trees/shard-*.json`, in tree order. InputError
  naming the file when there is none, or when a file predates the node texts (the search must be
  rerun into a new workdir for kto rows)."""
  files = sorted(glob.glob(os.path.join(search_dir, "trees", "shard-*.json")))
  if not files:
    raise InputError("no search tree files (run the search stage first)", os.path.join(search_dir, "trees"))
  out = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      shard = json.load(f)
    for tid, stats in zip(shard["tree_ids"], shard["trees"]):
      if not _is_node_row(stats):
        raise InputError("tree file has no node texts (written by an older search); kto rows need "
                         "a search run with this version", path)
      out.append((int(tid), stats))
  return sorted(out, key=lambda t: t[0])


def kto_dataset(rows: Sequence[dict]) -> datasets.Dataset:
  cols = {k: [r[k] for r in rows] for k in features("kto")}
  return datasets.Dataset.from_dict(cols, features=features("kto"))


def config_fingerprint(workdir: str | os.PathLike) -> str:
  """First 16 hex digits of the SHA-256 of the workdir's config.json (canonical JSON)."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    return "unknown (no config.json)"
  cfg = json.loads(path.read_text(encoding="utf-8"))
  return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def card(fmt: str, ds: datasets.Dataset, *, task: str, fingerprint: str, command: str, source: str) -> str:
  """The dataset card (README.md): task, counts, config fingerprint, command, rule, columns."""
  n = len(ds)
  lines = ["---", "tags: [trl, " + fmt + ", engage_jax]", "---", "",
           f"# engage_jax search preferences ({fmt}, task {task})", "",
           f"Stepwise preference data from i×MCTS over simulated conversations ({source}).", "",
           f"- rows: {n}"]
  if fmt == "kto":
    pos = int(sum(ds["label"]))
    lines += [f"- desirable (label True): {pos}", f"- undesirable (label False): {n - pos}",
              "", "Rule: every scored child (visits >= the search's pair_min_visits, with a value) of a node "
              "with at least two scored children is desirable when its value is above the mean of its siblings' "
              f"values, undesirable when below; ties (|gap| <= {TIE_TOLERANCE:g} × max(1, |values|)) are dropped."]
  else:
    lines += [f"- trees: {len(set(ds['tree_id']))}",
              "", "Rule: at every expanded node, every ordered pair of children whose mean values differ by at "
              "least the search's margin (engage_jax/search/pairs.py)."]
  lines += ["", f"- config fingerprint: `{fingerprint}` (SHA-256 of the workdir's config.json, 16 hex digits)",
            f"- command: `{command}`", "", "Load: `datasets.load_from_disk(DIR)`; TRL's "
            f"`{'DPOTrainer' if fmt == 'dpo' else 'KTOTrainer'}` takes it as `train_dataset` (conversational format).",
            "", "## Columns", "", "| column | type | meaning |", "|---|---|---|"]
  for k, (f, doc) in {**TRL_COLUMNS[fmt], **SEARCH_COLUMNS[fmt]}.items():
    typ = "list of {role, content}" if f == MESSAGES else f.dtype
    lines.append(f"| `{k}` | {typ} | {doc} |")
  return "\n".join(lines) + "\n"


def prepare_out(out: str | os.PathLike, force: bool = False) -> Path:
  """`out` empty or new; with `force` an earlier export there is replaced. InputError otherwise."""
  out = Path(out)
  if out.exists() and not out.is_dir():
    raise InputError("is a file, not a directory", f"--dataset_out={out}")
  if out.is_dir() and any(out.iterdir()):
    if not force:
      raise InputError("is not empty; choose an empty --dataset_out, or pass --force to replace it",
                       f"--dataset_out={out}")
    if not (out / "dataset_info.json").is_file():
      raise InputError("is not empty and holds no dataset; refusing to replace it", f"--dataset_out={out}")
    shutil.rmtree(out)
  return out


def export_dataset(workdir: str | os.PathLike, out: str | os.PathLike, fmt: str = "dpo", *,
                   command: str = "", force: bool = False) -> dict:
  """Writes the workdir's search output as a `fmt` dataset + README.md into `out`; returns
  {"format", "rows", "out"} (+ "desirable", "undesirable" for kto)."""
  if fmt not in FORMATS:
    raise InputError(f"unknown format {fmt!r}; expected one of {FORMATS}", "--format")
  wd = Path(workdir)
  if not (wd / "config.json").is_file():
    raise InputError("no such work directory (no config.json)", f"--workdir={wd}")
  cfg = json.loads((wd / "config.json").read_text(encoding="utf-8"))
  out = prepare_out(out, force)
  if fmt == "dpo":
    files = sorted(str(f) for f in (wd / "pairs").glob("shard-*.jsonl") if f.stat().st_size > 0)
    if not files:
      raise InputError("no preference pairs (run the search stage first, or the search found none)",
                       str(wd / "pairs"))
    ds = dpo_dataset(pair_data.read_pair_files(files))
  else:
    min_visits = int(cfg.get("search", {}).get("pair_min_visits", 1))
    rows = [r for tid, t in read_trees(wd / "search") for r in kto_rows(t, tid, min_visits)]
    if not rows:
      raise InputError("the trees have no node with two scored children of different values", str(wd / "search"))
    ds = kto_dataset(rows)
  ds.save_to_disk(str(out))
  text = card(fmt, ds, task=cfg.get("task", "?"), fingerprint=config_fingerprint(wd), command=command,
              source=f"workdir {wd.name}")
  (out / "README.md").write_text(text, encoding="utf-8")
  got = {"format": fmt, "rows": len(ds), "out": str(out)}
  if fmt == "kto":
    got["desirable"] = int(sum(ds["label"]))
    got["undesirable"] = len(ds) - got["desirable"]
  return got
