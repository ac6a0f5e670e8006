"""Named variants x seeds over the pipeline, with shared stages, resume, and the comparison table.

Layout of the experiment directory DIR (every directory with a stages.json is a `Workdir`):
  seed-S/base/          a pipeline workdir (pipeline.run): tokenizer, sft_agent, sft_simulator,
                        eval_sft — shared by every variant of seed S (config.seed = S)
  seed-S/sims/sim-J/    held-out simulator J (J = 1 .. ensemble_size - 1): stage sft_simulator, the
                        pipeline's simulator SFT with seed S + 100 J (other init, other sandbox
                        training split); tokenizer from seed-S/base
  seed-S/<variant>/     pairs/, search/, dpo_agent/ or agent/, eval/, oracle/, ens/sim-J/ (dialogues.jsonl)
                        and stages.json: its steps (search, dpo, pairs, train, eval, ens/sim-J,
                        oracle) as workdir stages, each with the config values it depends on
                        (`step values`), its result ("info") and seconds; tokenizer/ and sft_*/
                        resolve to seed-S/base (`Workdir.links`)
  seed-S/.lock          held by the run working on seed S (runs of different seeds may share DIR)
  experiment.json experiment.md reward.png

A rerun skips every done step and reuses its recorded result. Before any work, each step's recorded
values are compared with the ones it would run with now (`Workdir.conflicts`, the pipeline's
STAGE_KEYS of the stages it stands on plus the experiment keys it reads): a change is an error
naming the step and keys (restore them, or delete the variant's directory to rerun it), never a
silent reuse. An unfinished step resumes (checkpoints, search shards) as in the pipeline.

The layout before this one kept seed-S/done/<step>.json markers: a run adopts each such marker
once, as the step's record with this run's values (as the pipeline adopts stages recorded before
per-stage values), and moves it to seed-S/done.migrated/.

Shared steps run once: the base, the held-out simulators and the "future" search (which future,
corpus_mix and rft all use). The pipeline's stage functions do the work (`ModelOps`) on the
variant's Workdir. Every agent is evaluated on the same held-out conditions and seeds as the
pipeline's eval_sft, so all comparisons are paired by (seed, condition).

experiment.json: {"variants": {name: {"seeds", "reward_mean", "ci95", "mean_turns", "oracle_mean",
"oracle_ci95", "oracle_expected", "oracle_first_turn_helpful", "oracle_unmatched_rate",
"sim_first_turn_helpful", "p_vs_sft", "p_vs_future", "oracle_p_vs_sft", "oracle_p_vs_future",
"seed_means", "heldout_gain", "heldout_p", "by_simulator", ...}}, "wall_seconds", "command",
"sizes"}. ci95: percentile bootstrap over (seed, condition) units of per-condition mean rewards;
p: paired sign-flip tests (evaluate.paired_test) over the same units. wall_seconds.by_step: each
step's seconds summed over its attempts ("base": the shared pipeline stages of seed-S/base).
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from engage_jax import build, evaluate, models, oracle, pipeline
from engage_jax.data import sft as sft_data
from engage_jax.errors import InputError, InputErrors
from engage_jax.evaluate import bootstrap_ci
from engage_jax.experiments import baselines, variants as V
from engage_jax.fileio import atomic_write_json, atomic_write_jsonl
from engage_jax.search.pairs import read_jsonl
from engage_jax.tokenizer import ChatTokenizer
from engage_jax.train import sft as sft_train
from engage_jax.workdir import Workdir, flatten, select

SHARED_STAGES = ("tokenizer", "sft_agent", "sft_simulator", "sft_heldout_simulator", "eval_sft")
BASE_LINKS = ("tokenizer", "sft_agent", "sft_simulator")


def pipeline_config(cfg, seed: int, **search):
  """The pipeline's config (no experiment section) for one seed, search keys overridden."""
  d = cfg.to_dict()
  d.pop("experiment", None)
  d["seed"] = int(seed)
  d["search"].update(search)
  return ml_collections.ConfigDict(d)


def per_condition(dialogues, key: str = "reward") -> dict[str, float]:
  """{condition id: mean outcome[key]} over scored dialogues."""
  g: dict[str, list[float]] = {}
  for d in evaluate.scored(dialogues) if key == "reward" else dialogues:
    g.setdefault(evaluate.condition_id(d), []).append(float(d.outcome[key]))
  return {c: float(np.mean(v)) for c, v in g.items()}


def shard_files(pairs_dir: Path) -> list[Path]:
  """The pair shards of a pairs directory (`<dir>/shard-*.jsonl`), in shard order."""
  return sorted(Path(pairs_dir).glob("shard-*.jsonl"))


def read_pairs(files) -> list[dict]:
  """The pair records of `files`, in order (empty shards give none)."""
  return [p for f in files for p in read_jsonl(str(f))]


class ModelOps:
  """The real work of each step (tests substitute fakes with the same methods)."""

  # ------------------------------------------------------------------ training
  def base(self, cfg, root: Path) -> dict:
    pipeline.run(cfg, str(root), SHARED_STAGES)
    return {}

  def simulator(self, cfg, view: Workdir) -> dict:
    return pipeline.stage_sft(cfg, view, "simulator")

  def search(self, cfg, view: Workdir) -> dict:
    return pipeline.stage_search(cfg, view)

  def dpo(self, cfg, view: Workdir) -> dict:
    return pipeline.stage_dpo(cfg, view)

  def corpus_mix_pairs(self, cfg, view: Workdir, pairs_dir: Path, n_corpus: int) -> dict:
    """Writes the search's pairs (`pairs_dir`) + corpus pairs into view's pairs/."""
    pairs = read_pairs(shard_files(pairs_dir))
    tok = build.load_tokenizer(view)
    agent = build.speaker(cfg, cfg.search, build.load_model(cfg, view.path("sft_agent", "hf")), tok, "agent")
    corpus = build.load_corpus(cfg)["train"]
    cp = baselines.corpus_pairs(cfg.task, corpus, agent, n_corpus or len(pairs), seed=cfg.seed + 13)
    atomic_write_jsonl(str(view.path("pairs", "shard-00000.jsonl")), pairs)
    atomic_write_jsonl(str(view.path("pairs", "shard-corpus.jsonl")), cp)
    return {"search_pairs": len(pairs), "corpus_pairs": len(cp)}

  def transfer_pairs(self, cfg, view: Workdir, files: Sequence[Path]) -> dict:
    """Copies the other task's pair files into view's pairs/ (their text is tokenised by this
    task's tokenizer at DPO time)."""
    pairs = read_pairs(files)
    atomic_write_jsonl(str(view.path("pairs", "shard-00000.jsonl")), pairs)
    tasks = sorted({str(p.get("meta", {}).get("task")) for p in pairs})
    return {"pairs": len(pairs), "source_tasks": tasks, "source": str(Path(files[0]).parents[2]) if files else ""}

  def rft(self, cfg, view: Workdir, pairs_dir: Path, steps: int, lr: float, min_value: float) -> dict:
    """SFT of the SFT agent on the search's chosen turns (value >= min_value) → view's agent/hf."""
    pairs = read_pairs(shard_files(pairs_dir))
    tok = build.load_tokenizer(view)
    msgs = baselines.rft_examples(pairs, min_value)
    out = view.path("agent")
    model = build.load_model(cfg, view.path("sft_agent", "hf"))
    if not msgs:
      models.save_pretrained(model, out / "hf")
      return {"examples": 0, "skipped": f"no chosen turn with value >= {min_value}"}
    exs = [e for m in msgs for e in sft_data.examples_from_messages(tok, m, cfg.data.max_len, targets=[len(m) - 1])]
    data = sft_data.pad_to_buckets(exs, tok.pad_id, cfg.data.max_len,
                                   sft_data.default_buckets(cfg.data.max_len, cfg.sft.min_bucket))
    tcfg = build.train_config(cfg, cfg.sft, steps=steps, learning_rate=lr,
                                 warmup_steps=max(1, steps // 10), max_len=cfg.data.max_len)
    model, summary = sft_train.train_sft(model, data, tcfg, str(out), mesh=build.make_mesh(cfg))
    models.save_pretrained(model, out / "hf")
    return {"examples": len(exs), "step": summary.get("step")}

  # ------------------------------------------------------------------ evaluation
  def _agent(self, cfg, tok, agent_dir, best_of_n: int, lookahead_dir):
    agent = build.speaker(cfg, cfg.eval, build.load_model(cfg, agent_dir), tok, "agent")
    if not best_of_n:
      return agent, None
    look = build.speaker(cfg, cfg.eval, build.load_model(cfg, lookahead_dir), tok, "simulator")
    policy = baselines.BestOfN(agent, look, best_of_n, cfg.task, cfg.eval.max_agent_turns, build.reward_cfg(cfg))
    return policy, baselines.simulate_best_of_n

  def sft_eval(self, cfg, base: Path) -> dict:
    return self._result(cfg, evaluate.load_dialogues(str(base / "eval_sft" / "dialogues.jsonl")))

  def evaluate(self, cfg, tok_dir: Path, agent_dir: Path, sim_dir: Path, out_dir: Path,
               best_of_n: int = 0, lookahead_dir: Path | None = None) -> dict:
    """The pipeline's evaluation (same conditions, settings and seed as stage_evaluate)."""
    tok = ChatTokenizer.load(tok_dir)
    agent, fn = self._agent(cfg, tok, agent_dir, best_of_n, lookahead_dir)
    sim = build.speaker(cfg, cfg.eval, build.load_model(cfg, sim_dir), tok, "simulator")
    conds = build.eval_conditions(cfg)
    settings = {"task": cfg.task, "max_agent_turns": cfg.eval.max_agent_turns,
                "samples_per_condition": cfg.eval.samples_per_condition, "reward": build.reward_cfg(cfg)}
    _, dialogues = evaluate.evaluate(agent, sim, conds, settings, seed=cfg.seed + 7,
                                     out_path=str(out_dir / "dialogues.jsonl"), simulate_fn=fn)
    return self._result(cfg, dialogues)

  def _result(self, cfg, dialogues) -> dict:
    res = {"summary": evaluate.summarize(dialogues, n_boot=2000), "per_condition": per_condition(dialogues)}
    if cfg.data.source == "sandbox":
      res["transcript"] = oracle.transcript_scores(cfg.task, dialogues, cfg.data.sandbox_world)
    samples = [d.outcome["agent_samples"] for d in dialogues if "agent_samples" in d.outcome]
    if samples:
      res["agent_samples_per_chat"] = float(np.mean(samples))
    return res

  def oracle(self, cfg, tok_dir: Path, agent_dir: Path, out_dir: Path, best_of_n: int = 0,
             lookahead_dir: Path | None = None) -> dict:
    """Live chats with the sandbox world as the user on the evaluation conditions."""
    tok = ChatTokenizer.load(tok_dir)
    agent, _ = self._agent(cfg, tok, agent_dir, best_of_n, lookahead_dir)
    rows = oracle.evaluate_world(agent, build.eval_conditions(cfg), cfg.task, cfg.eval.samples_per_condition,
                                 seed=cfg.seed + 11, world=cfg.data.sandbox_world)
    atomic_write_jsonl(str(out_dir / "dialogues.jsonl"), [d.to_json() for d in rows])
    return {"summary": oracle.summarize(rows), "per_condition": per_condition(rows),
            "per_condition_expected": per_condition(rows, "expected")}


Result = dict[str, Any]


class Experiment:
  """`run()` every variant x seed into `root` (resumed), then `write()` the table."""

  def __init__(self, cfg, root: str, variants: Sequence[str], seeds: Sequence[int], ops: Any = None,
               command: str = ""):
    V.check(cfg, list(variants), list(seeds))
    self.cfg, self.root = cfg, Path(root)
    self.variants, self.seeds = list(variants), list(seeds)
    self.ops = ops or ModelOps()
    self.command = command
    self.exp = cfg.experiment
    self.ran: list[str] = []   # steps computed by this run (not resumed), "seed-S/name"
    self._planning = False     # True in the pass that only checks recorded values (`plan`)
    self._problems: list[InputError] = []
    self._flats: dict[tuple[int, str], dict] = {}

  # ------------------------------------------------------------------ step values
  def _flat(self, seed: int, horizon: str = "") -> dict:
    """The flattened pipeline config of `seed` (search.reward_horizon = horizon if given)."""
    if (seed, horizon) not in self._flats:
      search = {"reward_horizon": horizon} if horizon else {}
      self._flats[seed, horizon] = flatten(pipeline.config_to_json(pipeline_config(self.cfg, seed, **search)))
    return self._flats[seed, horizon]

  def _values(self, seed: int, stage: str, horizon: str = "", lineage: bool = True) -> dict:
    """The config values pipeline `stage` depends on (with its ancestors' unless not `lineage`)."""
    flat = self._flat(seed, horizon)
    if lineage:
      return pipeline.stage_values(flat, stage)
    return select(flat, pipeline.STAGE_KEYS[stage], pipeline.IGNORED + pipeline.STAGE_EXCLUDE.get(stage, ()))

  def _exp_values(self, *keys: str) -> dict:
    return {f"experiment.{k}": self.exp.get(k) for k in keys}

  def _agent_values(self, seed: int, v: str) -> dict:
    """The values the agent of variant `v` depends on (what trained it, and how it decodes)."""
    if v in ("sft", "best_of_n"):
      out = self._values(seed, "sft_agent")
      if v == "best_of_n":
        out.update(self._values(seed, "sft_simulator"), **self._exp_values("best_of_n"))
      return out
    if v in ("future", "turn"):
      return self._values(seed, "dpo", v)
    if v == "transfer":
      return {**self._values(seed, "sft_agent"), **self._values(seed, "dpo", lineage=False),
              **self._exp_values("transfer_from")}
    out = self._values(seed, "search", "future")
    if v == "corpus_mix":
      return {**out, **self._values(seed, "dpo", lineage=False), **self._exp_values("corpus_pairs")}
    assert v == "rft", v
    return {**out, **self._values(seed, "sft_agent", lineage=False),
            **self._exp_values("rft_steps", "rft_learning_rate", "rft_min_value")}

  # ------------------------------------------------------------------ steps
  def _seed_dir(self, seed: int) -> Path:
    return self.root / f"seed-{seed}"

  def _variant_wd(self, seed: int, v: str) -> Workdir:
    """The Workdir of variant v's steps; its tokenizer and SFT models are seed-S/base's."""
    base = self._seed_dir(seed) / "base"
    return Workdir(self._seed_dir(seed) / v, links={k: base / k for k in BASE_LINKS},
                   outputs=VARIANT_OUTPUTS)

  def _adopt_legacy(self, seed: int, wd: Workdir, stage: str, label: str, values: Mapping) -> None:
    """Records the old layout's marker seed-S/done/<label>.json as `stage`'s record in `wd` (this
    run's values), and moves the marker to done.migrated/ (module doc)."""
    marker = self._seed_dir(seed) / "done" / f"{label.replace('/', '__')}.json"
    if self._planning or stage in wd.stages() or not marker.exists():
      return
    old = json.loads(marker.read_text(encoding="utf-8"))
    wd.begin(stage, values)
    wd.end(stage, float(old.get("seconds", 0.0)), done=True, info=old["result"], adopted=str(marker))
    moved = self._seed_dir(seed) / "done.migrated" / marker.name
    moved.parent.mkdir(exist_ok=True)
    os.replace(marker, moved)
    print(f"[experiment] seed {seed}: {label}: adopted the old layout's {marker} (moved to {moved})", flush=True)

  def _step(self, seed: int, wd: Workdir, stage: str, values: Mapping, fn: Callable[[], Result],
            label: str = "") -> Result:
    """Runs `fn` as `stage` of `wd` unless it is done (then its recorded result); while planning,
    only collects the conflict of its recorded values with `values`."""
    label = label or f"{wd.root.name}/{stage}"
    self._adopt_legacy(seed, wd, stage, label, values)
    changed = wd.conflicts(stage, values, pipeline.RESUMABLE)
    if changed:
      if not self._planning:
        raise _conflict_error(wd, stage, label, changed)
      self._problems.append(_conflict_error(wd, stage, label, changed))
    if wd.is_done(stage):
      return wd.stages()[stage].get("info", {})
    if self._planning:
      return {}
    print(f"[experiment] seed {seed}: {label}", flush=True)
    wd.begin(stage, values)
    t0 = time.perf_counter()
    try:
      result = fn()
    except BaseException:
      wd.end(stage, time.perf_counter() - t0, done=False)
      raise
    wd.end(stage, time.perf_counter() - t0, done=True, info=result)
    self.ran.append(f"seed-{seed}/{label}")
    return result

  def _base(self, seed: int) -> None:
    """The shared pipeline stages of seed S in seed-S/base (pipeline.run's own records)."""
    base = Workdir(self._seed_dir(seed) / "base")
    values = {st: self._values(seed, st) for st in SHARED_STAGES}
    problems = pipeline.plan_conflicts(base, values, SHARED_STAGES, ())
    if self._planning:
      self._problems.extend(problems)
      return
    if problems:
      raise InputErrors(problems)
    if all(base.is_done(st) for st in SHARED_STAGES):
      return
    print(f"[experiment] seed {seed}: base", flush=True)
    self.ops.base(pipeline_config(self.cfg, seed), base.root)
    self.ran.append(f"seed-{seed}/base")

  def _search(self, seed: int, horizon: str) -> Path:
    """Runs (or resumes) the `horizon` search of `seed`; returns its pairs directory."""
    wd = self._variant_wd(seed, horizon)
    cfg = pipeline_config(self.cfg, seed, reward_horizon=horizon)
    self._step(seed, wd, "search", self._values(seed, "search", horizon), lambda: self.ops.search(cfg, wd))
    return wd.path("pairs")

  def _agent(self, seed: int, v: str) -> tuple[Path, int]:
    """(agent HF dir, best_of_n) of variant v, training what it needs."""
    base = self._seed_dir(seed) / "base"
    cfg = pipeline_config(self.cfg, seed)
    if v in ("sft", "best_of_n"):
      return base / "sft_agent" / "hf", int(self.exp.best_of_n) if v == "best_of_n" else 0
    wd = self._variant_wd(seed, v)
    values = self._agent_values(seed, v)
    if v in ("future", "turn"):
      self._search(seed, v)
      cfg = pipeline_config(self.cfg, seed, reward_horizon=v)
      self._step(seed, wd, "dpo", values, lambda: self.ops.dpo(cfg, wd))
      return wd.path("dpo_agent", "hf"), 0
    if v == "transfer":
      files = V.transfer_pairs(self.exp.transfer_from, seed)
      self._step(seed, wd, "pairs", self._exp_values("transfer_from"),
                 lambda: self.ops.transfer_pairs(cfg, wd, files))
      self._step(seed, wd, "dpo", values, lambda: self.ops.dpo(cfg, wd))
      return wd.path("dpo_agent", "hf"), 0
    pairs_dir = self._search(seed, "future")
    if v == "corpus_mix":
      self._step(seed, wd, "pairs", {**self._values(seed, "search", "future"), **self._exp_values("corpus_pairs")},
                 lambda: self.ops.corpus_mix_pairs(cfg, wd, pairs_dir, int(self.exp.corpus_pairs)))
      future = self._variant_wd(seed, "future")
      future_dpo = future.stages().get("dpo", {}).get("info") if future.is_done("dpo") else None
      if future_dpo and future_dpo.get("total_steps"):  # as many DPO steps as "future" (equal compute)
        cfg.dpo.steps = int(future_dpo["total_steps"])
      self._step(seed, wd, "dpo", values, lambda: self.ops.dpo(cfg, wd))
      return wd.path("dpo_agent", "hf"), 0
    assert v == "rft", v
    self._step(seed, wd, "train", values, lambda: self.ops.rft(cfg, wd, pairs_dir, int(self.exp.rft_steps),
                                                               float(self.exp.rft_learning_rate),
                                                               float(self.exp.rft_min_value)))
    return wd.path("agent", "hf"), 0

  def simulators(self, seed: int) -> dict[str, Path]:
    """{"sim-0": the search's simulator, "sim-J": held-out ones (trained here once)}."""
    base = self._seed_dir(seed) / "base"
    out = {"sim-0": base / "sft_simulator" / "hf"}
    for j in range(1, int(self.exp.ensemble_size)):
      cfg = pipeline_config(self.cfg, seed + 100 * j)
      wd = Workdir(self._seed_dir(seed) / "sims" / f"sim-{j}", links={"tokenizer": base / "tokenizer"})
      self._step(seed, wd, "sft_simulator", self._values(seed + 100 * j, "sft_simulator"),
                 functools.partial(self.ops.simulator, cfg, wd), label=f"sims/sim-{j}")
      out[f"sim-{j}"] = wd.path("sft_simulator", "hf")
    return out

  def run_variant(self, seed: int, v: str) -> dict:
    """Variant v's result for `seed`: {"variant", "seed", "sim", "ensemble": {sim: result}, "oracle"}."""
    base = self._seed_dir(seed) / "base"
    cfg = pipeline_config(self.cfg, seed)
    self._base(seed)
    sims = self.simulators(seed)
    agent_dir, n = self._agent(seed, v)
    wd = self._variant_wd(seed, v)
    agent = self._agent_values(seed, v)
    evals = self._values(seed, "eval_sft", lineage=False)
    tok, look = base / "tokenizer", sims["sim-0"]
    if v == "sft":
      main = self._step(seed, wd, "eval", self._values(seed, "eval_sft"), lambda: self.ops.sft_eval(cfg, base))
    else:
      main = self._step(seed, wd, "eval", {**agent, **self._values(seed, "eval_sft")},
                        lambda: self.ops.evaluate(cfg, tok, agent_dir, look, wd.path("eval"), n, look))
    result = {"variant": v, "seed": seed, "sim": main, "ensemble": {"sim-0": main}}
    # held-out simulators: this run's, and those an earlier run (larger ensemble) evaluated against
    recorded = [st.split("/")[1] for st in wd.stages() if st.startswith("ens/") and wd.is_done(st)]
    for name in sorted(set(sims) | set(recorded), key=lambda x: int(x.split("-")[1])):
      if name != "sim-0":
        j = int(name.split("-")[1])
        sim_dir = self._seed_dir(seed) / "sims" / name / "sft_simulator" / "hf"
        sim_values = {f"{name}:{k}": x for k, x in self._values(seed + 100 * j, "sft_simulator").items()}
        result["ensemble"][name] = self._step(
            seed, wd, f"ens/{name}", {**agent, **evals, **sim_values},
            functools.partial(self.ops.evaluate, cfg, tok, agent_dir, sim_dir, wd.path("ens", name), n, look))
    if self.exp.oracle or wd.is_done("oracle"):
      result["oracle"] = self._step(seed, wd, "oracle", {**agent, **evals},
                                    lambda: self.ops.oracle(cfg, tok, agent_dir, wd.path("oracle"), n, look))
    return result

  def plan(self) -> None:
    """Every step's recorded values against this run's, before any work: InputErrors (one line
    each) for the steps whose values changed. Writes nothing."""
    self._planning, self._problems = True, []
    try:
      for seed in self.seeds:
        for v in self.variants:
          self.run_variant(seed, v)
    finally:
      self._planning = False
    if self._problems:
      raise InputErrors(list({str(p): p for p in self._problems}.values()))

  def run(self) -> dict:
    t0 = time.perf_counter()
    self.plan()
    locked = []
    try:
      for seed in self.seeds:  # runs of other seeds may share DIR; one run per seed
        wd = Workdir(self._seed_dir(seed))
        wd.lock()
        locked.append(wd)
      results = {v: {} for v in self.variants}
      for seed in self.seeds:
        for v in self.variants:
          results[v][seed] = self.run_variant(seed, v)
    finally:
      for wd in locked:
        wd.unlock()
    summary = aggregate(results, self.variants)
    summary.update(command=self.command, wall_seconds=self.wall_seconds(time.perf_counter() - t0),
                   sizes=sizes(self.cfg), seeds=self.seeds)
    return summary

  def wall_seconds(self, this_run: float) -> dict:
    """{"this_run", "steps_total" (every finished step, earlier runs included), "by_step"}."""
    by: dict[str, float] = {}

    def add(name, seconds):
      by[name] = by.get(name, 0.0) + seconds
    for seed_dir in sorted(self.root.glob("seed-*")):
      base = Workdir(seed_dir / "base").wall_seconds()
      if any(st in base for st in SHARED_STAGES):
        add("base", sum(base.get(st, 0.0) for st in SHARED_STAGES))
      for rec in sorted(seed_dir.glob("sims/sim-*/stages.json")):
        add(f"sims/{rec.parent.name}", sum(Workdir(rec.parent).wall_seconds().values()))
      for rec in sorted(seed_dir.glob("*/stages.json")):
        if rec.parent.name not in ("base", "sims"):
          for st, sec in Workdir(rec.parent).wall_seconds().items():
            add(f"{rec.parent.name}/{st}", sec)
    return {"this_run": this_run, "steps_total": float(sum(by.values())),
            "by_step": {k: round(v, 1) for k, v in sorted(by.items())}}


# outputs of the variant steps that are not pipeline stages (Workdir.has_outputs)
VARIANT_OUTPUTS = {"train": ("agent",)}


def _conflict_error(wd: Workdir, stage: str, label: str, changed: Mapping[str, tuple]) -> InputError:
  shown = ", ".join(f"{k}={old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:3])
  more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
  return InputError(f"step {label} ran with other values of the config keys it depends on: "
                    f"{shown}{more}; restore those values, or delete {wd.root} to rerun it",
                    str(wd.path("stages.json")))


def sizes(cfg) -> dict:
  """The sizes that bound the experiment (stated with the results)."""
  return {"sft_agent_steps": cfg.sft.agent_steps, "sft_simulator_steps": cfg.sft.simulator_steps,
          "search_conditions": cfg.search.n_conditions, "search_budget": cfg.search.budget,
          "search_k": cfg.search.k, "eval_conditions": cfg.eval.n_conditions,
          "eval_samples_per_condition": cfg.eval.samples_per_condition,
          "dpo_epochs": cfg.dpo.num_epochs, **{k: v for k, v in cfg.experiment.to_dict().items()
                                               if k not in ("variants", "seeds")}}


def _units(results_v: Mapping, block: str, key: str = "per_condition", sim: str | None = None) -> dict:
  out = {}
  for seed, r in results_v.items():
    b = r["ensemble"].get(sim) if sim else r.get(block)  # seeds may differ in ensemble size
    if b is None:
      continue
    out.update({f"{seed}:{c}": x for c, x in b[key].items()})
  return out


def _paired_p(a: Mapping, b: Mapping) -> float | None:
  common = [k for k in a if k in b]
  if not common:
    return None
  return evaluate.paired_test([a[k] for k in common], [b[k] for k in common])


def aggregate(results: Mapping[str, Mapping[int, dict]], variants: Sequence[str]) -> dict:
  """The table (see module doc) from per-(variant, seed) results."""
  units = {v: _units(results[v], "sim") for v in variants}
  ounits = {v: _units(results[v], "oracle") for v in variants}
  eunits = {v: _units(results[v], "oracle", "per_condition_expected") for v in variants}
  table = {}
  for v in variants:
    rs = results[v]
    x = np.array(list(units[v].values()))
    row = {"seeds": sorted(rs), "n_units": int(x.size), "reward_mean": float(x.mean()),
           "ci95": list(bootstrap_ci(x, n_boot=5000)),
           "seed_means": {str(s): r["sim"]["summary"]["reward_mean"] for s, r in rs.items()},
           "mean_turns": float(np.mean([r["sim"]["summary"]["mean_turns"] for r in rs.values()])),
           "p_vs_sft": _paired_p(units.get("sft", {}), units[v]) if v != "sft" else None,
           "p_vs_future": _paired_p(units.get("future", {}), units[v]) if v != "future" else None}
    if all("transcript" in r["sim"] for r in rs.values()):
      row["sim_first_turn_helpful"] = float(np.mean([r["sim"]["transcript"]["first_turn_helpful"] for r in rs.values()]))
    samples = [r["sim"].get("agent_samples_per_chat") for r in rs.values() if r["sim"].get("agent_samples_per_chat")]
    if samples:
      row["agent_samples_per_chat"] = float(np.mean(samples))
    if ounits[v]:
      o = np.array(list(ounits[v].values()))
      e = np.array(list(eunits[v].values()))
      ob = [r["oracle"]["summary"] for r in rs.values()]
      row.update(oracle_mean=float(o.mean()), oracle_ci95=list(bootstrap_ci(o, n_boot=5000)),
                 oracle_expected=float(e.mean()), oracle_expected_ci95=list(bootstrap_ci(e, n_boot=5000)),
                 oracle_first_turn_helpful=float(np.mean([b["first_turn_helpful"] for b in ob])),
                 oracle_unmatched_rate=float(np.mean([b["unmatched_rate"] for b in ob])),
                 oracle_p_vs_sft=_paired_p(eunits.get("sft", {}), eunits[v]) if v != "sft" else None,
                 oracle_p_vs_future=_paired_p(eunits.get("future", {}), eunits[v]) if v != "future" else None,
                 sim_minus_oracle=float(x.mean() - e.mean()))
    else:
      row["oracle_mean"] = None
    sims = sorted({k for r in rs.values() for k in r["ensemble"]})
    by_sim = {}
    for sim in sims:
      u = _units(rs, "", sim=sim)
      base = _units(results["sft"], "", sim=sim) if "sft" in results else {}
      common = [k for k in u if k in base]
      by_sim[sim] = {"reward_mean": float(np.mean(list(u.values()))),
                     "gain_vs_sft": float(np.mean([u[k] - base[k] for k in common])) if common else None,
                     "p_vs_sft": _paired_p(base, u) if v != "sft" and common else None}
    row["by_simulator"] = by_sim
    held = [s for s in sims if s != "sim-0"]
    if held and "sft" in results:
      a, b = {}, {}
      for sim in held:
        a.update({f"{sim}:{k}": x for k, x in _units(rs, "", sim=sim).items()})
        b.update({f"{sim}:{k}": x for k, x in _units(results["sft"], "", sim=sim).items()})
      common = [k for k in a if k in b]
      row["heldout_gain"] = float(np.mean([a[k] - b[k] for k in common])) if common else None
      row["heldout_p"] = _paired_p(b, a) if v != "sft" else None
    table[v] = row
  return {"variants": table}


def render_markdown(summary: Mapping, task: str) -> str:
  fmt = (lambda x: "–" if x is None else (f"{x:.3f}" if task == "es" else f"${x:.3f}"))
  pf = (lambda p: "–" if p is None else f"{p:.3g}")
  lines = [f"# Experiment ({task})", "", f"`{summary.get('command', '')}`", "",
           "| variant | seeds | reward (sim) | 95% CI | turns | oracle (sampled) | oracle (exact) | first-turn helpful (oracle) | held-out sim gain | p vs sft | p vs future | oracle p vs sft |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for v, r in summary["variants"].items():
    ci = f"[{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}]"
    lines.append(f"| {v} | {len(r['seeds'])} | {fmt(r['reward_mean'])} | {ci} | {r['mean_turns']:.2f} | "
                 f"{fmt(r.get('oracle_mean'))} | {fmt(r.get('oracle_expected'))} | "
                 f"{pf(r.get('oracle_first_turn_helpful'))} | {fmt(r.get('heldout_gain'))} | "
                 f"{pf(r.get('p_vs_sft'))} | {pf(r.get('p_vs_future'))} | {pf(r.get('oracle_p_vs_sft'))} |")
  w = summary.get("wall_seconds", {})
  lines += ["", f"Wall time: this run {w.get('this_run', 0):.0f} s; all steps {w.get('steps_total', 0):.0f} s.",
            "", "Sizes: " + ", ".join(f"{k}={v}" for k, v in summary.get("sizes", {}).items()), ""]
  return "\n".join(lines)


def plot(summary: Mapping, path: Path, task: str) -> None:
  import matplotlib  # noqa: PLC0415 (optional dependency: matplotlib (plots only))
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency)
  names = list(summary["variants"])
  rows = [summary["variants"][n] for n in names]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.6))
  m = np.array([r["reward_mean"] for r in rows])
  # clipped at 0: a CI of identical units ([x, x]) can sit a rounding error off their mean
  err = np.clip(np.array([[r["reward_mean"] - r["ci95"][0], r["ci95"][1] - r["reward_mean"]] for r in rows]).T, 0, None)
  ax.bar(x - 0.2, m, 0.4, yerr=err, capsize=3, label="learned simulator")
  if all(r.get("oracle_expected") is not None for r in rows):
    o = np.array([r["oracle_expected"] for r in rows])
    oerr = np.clip(np.array([[r["oracle_expected"] - r["oracle_expected_ci95"][0],
                              r["oracle_expected_ci95"][1] - r["oracle_expected"]] for r in rows]).T, 0, None)
    ax.bar(x + 0.2, o, 0.4, yerr=oerr, capsize=3, label="sandbox world (exact)")
  ax.set_xticks(x, names)
  ax.set_ylabel("engagement rate" if task == "es" else "mean donation ($)")
  ax.legend(fontsize=8)
  ax.set_title("reward by variant (95% CI over seeds x conditions)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(summary: Mapping, root: Path, task: str) -> None:
  root.mkdir(parents=True, exist_ok=True)
  atomic_write_json(root / "experiment.json", summary)
  (root / "experiment.md").write_text(render_markdown(summary, task))
  plot(summary, root / "reward.png", task)
