"""The pipeline's stages as functions of (config, workdir): tokenizer → SFT agent + simulator (+ the
held-out simulator) → evaluate SFT → i×MCTS → DPO → evaluate DPO → report. Launchers in launch/ call these.
What a stage builds from the config (tokenizer, models, speakers, data, trainer settings) comes from
engage_jax.build.

Each stage reads its inputs from the workdir, writes its outputs there, and marks itself done
(see engage_jax.workdir); a done stage is skipped, an interrupted one resumes.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from collections.abc import Callable

from engage_jax import build, config_check, evaluate, models, oracle, preflight, progress, report
from engage_jax.data import sandbox, sft as sft_data
from engage_jax.errors import InputError, InputErrors
from engage_jax.fileio import atomic_write_json, atomic_write_jsonl
from engage_jax.models import lora
from engage_jax.search.env import ModelEnv
from engage_jax.search.run import run_search
from engage_jax.train import dpo as dpo_train, sft as sft_train
from engage_jax.train.pair_data import read_pair_files
from engage_jax.workdir import Workdir, flatten, select

log = logging.getLogger("engage_jax")

STAGES = ("tokenizer", "sft_agent", "sft_simulator", "sft_heldout_simulator", "eval_sft", "search", "dpo",
          "rounds", "eval_dpo", "report")
# SFT roles: the model config each trains (`config.model.<role>`) and its seed offset. The held-out
# simulator (config.eval.heldout_simulator) is the simulator trained on the other half of the
# training dialogues with another seed; the search never queries it (`train_dialogues`).
SFT_ROLES = {"agent": ("agent", 0), "simulator": ("simulator", 0), "heldout_simulator": ("simulator", 100)}


# ===================================================================== config checks
def config_to_json(cfg) -> dict:
  return json.loads(cfg.to_json())


# ===================================================================== stages
def stage_tokenizer(cfg, wd: Workdir) -> dict:
  tok = build.make_tokenizer(cfg, wd)
  return {"vocab_size": tok.vocab_size}


def stage_sft(cfg, wd: Workdir, role: str) -> dict:
  """SFT of `role` (SFT_ROLES) into `DIR/sft_<role>`; the held-out simulator only with
  config.eval.heldout_simulator (otherwise the stage records that it was not asked for)."""
  if role == "heldout_simulator" and not cfg.eval.heldout_simulator:
    return {"skipped": "config.eval.heldout_simulator is off"}
  model_role, seed_offset = SFT_ROLES[role]
  tok = build.load_tokenizer(wd)
  corpus = build.load_corpus(cfg)
  buckets = sft_data.default_buckets(cfg.data.max_len, cfg.sft.min_bucket)
  dialogues = build.train_dialogues(cfg, corpus, role)
  train, stats = sft_data.build_arrays(dialogues, tok, model_role, cfg.data.max_len, buckets)
  valid = (sft_data.build_arrays(corpus["valid"], tok, model_role, cfg.data.max_len, buckets)[0]
           if corpus["valid"] else None)
  steps = cfg.sft.agent_steps if role == "agent" else cfg.sft.simulator_steps
  out = wd.path(f"sft_{role}")
  if steps == 0:  # no SFT: the pretrained model as it is (e.g. a prompted simulator)
    if not cfg.model[model_role].path:
      raise ValueError(f"config.sft.{model_role}_steps=0 needs a pretrained config.model.{model_role}.path")
    build.save_trained(build.new_model(cfg, model_role, tok), out, cfg.model[model_role].path)
    return {"examples": 0, "step": 0, "pretrained_as_is": True}
  model = build.new_model(cfg, model_role, tok)
  tcfg = build.train_config(cfg, cfg.sft, steps=steps, max_len=cfg.data.max_len, seed=cfg.seed + seed_offset)
  model, summary = sft_train.train_sft(model, train, tcfg, str(out), mesh=build.make_mesh(cfg), eval_data=valid)
  build.save_trained(model, out, cfg.model[model_role].path)
  return {"examples": stats.get("examples"), "dialogues": len(dialogues),
          **{k: v for k, v in summary.items() if _jsonable(v)}}


def stage_evaluate(cfg, wd: Workdir, which: str) -> dict:
  tok = build.load_tokenizer(wd)
  conds = build.roots(cfg, build.load_corpus(cfg) if cfg.data.source != "sandbox" else {}, "eval", cfg.eval.n_conditions)
  _warn(preflight.check_prompt_room(tok, cfg.task, conds, cfg.eval.max_prompt_len, "config.eval.max_prompt_len"))
  if which == "dpo" and int(cfg.search_dpo_rounds) > 1:  # the earlier rounds' agents too (report extra.rounds)
    for r in range(1, int(cfg.search_dpo_rounds)):
      evaluate_agent(cfg, wd, tok, conds, round_paths(wd, r)["dpo"] / "hf", wd.path("eval_dpo", f"round-{r}"),
                     f"eval_dpo/round-{r}/", heldout=False)
  agent_dir = wd.path("sft_agent", "hf") if which == "sft" else final_agent_dir(cfg, wd)
  return evaluate_agent(cfg, wd, tok, conds, agent_dir, wd.path(f"eval_{which}"), f"eval_{which}/",
                        heldout=bool(cfg.eval.heldout_simulator))


def evaluate_agent(cfg, wd: Workdir, tok, conds, agent_dir: Path, out: Path, prefix: str, heldout: bool) -> dict:
  """Chats of the agent in `agent_dir` with the search's simulator (`out`/dialogues.jsonl,
  summary.json) and, with `heldout`, the held-out simulator (`out`/heldout/); returns the summary
  (with "heldout_simulator")."""
  agent = build.speaker(cfg, cfg.eval, build.load_model(cfg, agent_dir), tok, "agent")
  settings = {"task": cfg.task, "max_agent_turns": cfg.eval.max_agent_turns,
              "samples_per_condition": cfg.eval.samples_per_condition, "batch_size": cfg.eval.batch_size,
              "reward": build.reward_cfg(cfg, evaluation=True)}
  # the search's simulator, then (config.eval.heldout_simulator) the held-out one in eval_<which>/heldout,
  # with the same conditions and seeds: the report pairs them per condition
  sims = [("sft_simulator", out, prefix)]
  if heldout:
    sims.append(("sft_heldout_simulator", out / "heldout", f"{prefix}heldout/"))
  result = {}
  for sim_stage, sim_out, prefix in sims:
    sim = build.speaker(cfg, cfg.eval, build.load_model(cfg, wd.path(sim_stage, "hf")), tok, "simulator")
    summary, _ = evaluate.evaluate(agent, sim, conds, settings, seed=cfg.seed + 7,
                                   out_path=str(sim_out / "dialogues.jsonl"))
    del sim
    atomic_write_json(sim_out / "summary.json", summary)
    tb = progress.Scalars(sim_out, prefix=prefix)
    tb.write(0, {k: v for k, v in summary.items() if k != "ci95"})
    tb.close()
    if not result:
      result = summary
    else:
      result["heldout_simulator"] = summary
  return result


def stage_search(cfg, wd: Workdir) -> dict:
  return run_search_round(cfg, wd, 1)


def round_paths(wd: Workdir, round_: int) -> dict[str, Path]:
  """Where round r of search → DPO (config.search_dpo_rounds) reads its agent and writes: round 1
  is the pipeline's search/, pairs/, dpo_agent/ (from the SFT agent); round r > 1 lives in
  rounds/round-r/ and starts from round r - 1's DPO agent (policy and reference)."""
  if round_ == 1:
    return {"agent": wd.path("sft_agent", "hf"), "search": wd.path("search"), "pairs": wd.path("pairs"),
            "dpo": wd.path("dpo_agent")}
  prev = round_paths(wd, round_ - 1)["dpo"] / "hf"
  base = wd.path("rounds", f"round-{round_}")
  return {"agent": prev, "search": base / "search", "pairs": base / "pairs", "dpo": base / "dpo_agent"}


def final_agent_dir(cfg, wd: Workdir) -> Path:
  """The DPO agent of the last round (config.search_dpo_rounds; 1: DIR/dpo_agent/hf)."""
  return round_paths(wd, int(cfg.search_dpo_rounds))["dpo"] / "hf"


def run_search_round(cfg, wd: Workdir, round_: int) -> dict:
  """i×MCTS of round `round_` (`round_paths`) with the search's simulator; summary.json in its dir."""
  paths = round_paths(wd, round_)
  tok = build.load_tokenizer(wd)
  scfg = build.search_config(cfg, round_)
  corpus = build.load_corpus(cfg) if cfg.data.source != "sandbox" else {}
  rts = build.roots(cfg, corpus, "search", cfg.search.n_conditions)
  _warn(preflight.check_prompt_room(tok, cfg.task, rts, cfg.search.max_prompt_len, "config.search.max_prompt_len"))
  agent = build.load_model(cfg, paths["agent"])
  sim = build.load_model(cfg, wd.path("sft_simulator", "hf"))
  strategy_fn = None
  if cfg.data.source == "sandbox":
    strategy_fn = lambda text: sandbox.strategy_of(text, cfg.task)
  env = ModelEnv.from_config(agent, sim, tok, scfg, task=cfg.task, reward_cfg=build.reward_cfg(cfg),
                             max_prompt_len=cfg.search.max_prompt_len, strategy_fn=strategy_fn,
                             kv_cache=cfg.rollout.kv_cache)
  summary = run_search(env, rts, scfg, str(paths["search"]), trees_per_shard=cfg.search.trees_per_shard,
                       pairs_dir=str(paths["pairs"]), trees_in_flight=cfg.search.trees_in_flight)
  atomic_write_json(paths["search"] / "summary.json", summary)
  return summary


def _warn(msg: str | None) -> None:
  if msg:
    log.warning(msg)
    print(f"[engage_jax] warning: {msg}", flush=True)


def pair_files(wd: Workdir, round_: int = 1) -> list[Path]:
  """The search's shard files that hold pairs (a shard whose trees gave no value gaps is empty)."""
  pairs = round_paths(wd, round_)["pairs"]
  old = wd.path("search", "pairs")
  if round_ == 1 and old.is_dir() and not pairs.exists():  # the layout before pairs moved to DIR/pairs
    raise InputError(f"this workdir keeps its pairs in the old place {old}; move them: mv {old} "
                     f"{pairs}", str(pairs))
  return sorted(f for f in pairs.glob("shard-*.jsonl") if f.stat().st_size > 0)


def stage_dpo(cfg, wd: Workdir) -> dict:
  return run_dpo_round(cfg, wd, 1)


def run_dpo_round(cfg, wd: Workdir, round_: int) -> dict:
  """DPO of round `round_` on its own search's pairs; policy and reference start from the round's
  agent (round 1: the SFT agent; r > 1: round r - 1's DPO agent)."""
  paths = round_paths(wd, round_)
  files = pair_files(wd, round_)
  n_pairs = len(dpo_train.read_pair_files([str(f) for f in files])) if files else 0  # checked before any work
  out = paths["dpo"]
  if n_pairs == 0:  # a null result, not a crash at the end of a long run: DPO agent = its start
    msg = (f"{paths['pairs']}: the search found no preference pairs (no value gaps of at least "
           "config.search.margin inside the trees); DPO is skipped and the DPO agent is the agent it "
           "started from. Raise config.search.budget / n_conditions / max_turns or lower config.search.margin")
    log.warning(msg)
    print(f"[engage_jax] warning: {msg}", flush=True)
    models.save_pretrained(build.load_model(cfg, paths["agent"]), out / "hf")
    return {"pairs": 0, "skipped": "no preference pairs"}
  summary = train_dpo_agent(cfg, wd, [str(f) for f in files], out, paths["agent"])
  return {"pairs": n_pairs, **{k: v for k, v in summary.items() if _jsonable(v)}}


def train_dpo_agent(cfg, wd: Workdir, pairs: list[str], out: Path, agent_dir: Path | None = None) -> dict:
  """DPO of the agent in `agent_dir` (default the workdir's SFT agent) on `pairs` (JSON-lines files
  or saved datasets, read by train.pair_data) into `out` (checkpoints, hf/); the stage's, the
  rounds' and launch/dpo.py --pairs' one path."""
  agent_dir = agent_dir or wd.path("sft_agent", "hf")
  # LoRA: a fresh adapter on the (merged) starting agent; the reference is that model, adapter off
  policy = build.with_lora(cfg, "agent", build.load_model(cfg, agent_dir), fresh=True)
  ref = None if lora.has_lora(policy) else build.load_model(cfg, agent_dir)
  tcfg = build.train_config(cfg, cfg.dpo)
  model, summary = dpo_train.train_dpo(policy, ref, pairs, build.load_tokenizer(wd), tcfg, str(out), mesh=build.make_mesh(cfg))
  build.save_trained(model, out, agent_dir)
  return summary


def stage_rounds(cfg, wd: Workdir) -> dict:
  """Rounds 2 .. config.search_dpo_rounds of search → DPO, each from the previous round's DPO agent
  (`round_paths`); a round whose DPO agent is written is kept on a rerun, an unfinished one resumes
  (the search per shard, DPO from its checkpoints). 1 round: nothing to do."""
  n = int(cfg.search_dpo_rounds)
  out = {}
  for r in range(2, n + 1):
    paths = round_paths(wd, r)
    summary_path = paths["dpo"] / "round.json"
    if summary_path.is_file():
      out[f"round-{r}"] = json.loads(summary_path.read_text())
      continue
    print(f"[engage_jax] round {r} of {n}: search from {paths['agent']}", flush=True)
    search = run_search_round(cfg, wd, r)
    dpo = run_dpo_round(cfg, wd, r)
    info = {"search": {k: v for k, v in search.items() if _jsonable(v)}, "dpo": dpo}
    atomic_write_json(summary_path, info)
    out[f"round-{r}"] = info
  return out if out else {"skipped": "config.search_dpo_rounds = 1"}


def oracle_report(cfg, wd: Workdir) -> dict:
  """report.json's `oracle` (sandbox only): per model ("sft", "dpo") the live world evaluation
  (`oracle.summarize` of `oracle.evaluate_world` on the evaluation conditions, seed cfg.seed + 11)
  with the transcript scores of its learned-simulator chats ("transcript") and the gap
  "sim_minus_oracle" (simulator reward minus the exact oracle expectation: the simulator gap /
  reward hacking figure). With config.search_dpo_rounds > 1 also "round-r" for the earlier rounds'
  DPO agents (their chats: eval_dpo/round-r). The world's chats of each agent: DIR/oracle/<name>.jsonl
  (outcome "expected": the exact expectation of the strategies played; paired by condition id)."""
  tok = build.load_tokenizer(wd)
  conds = build.eval_conditions(cfg)
  world = cfg.data.sandbox_world
  out = {}
  agents = [("sft", wd.path("sft_agent", "hf"), "eval_sft")]
  agents += [(f"round-{r}", round_paths(wd, r)["dpo"] / "hf", f"eval_dpo/round-{r}")
             for r in range(1, int(cfg.search_dpo_rounds))]
  agents.append(("dpo", final_agent_dir(cfg, wd), "eval_dpo"))
  for name, agent_dir, chats in agents:
    agent = build.speaker(cfg, cfg.eval, build.load_model(cfg, agent_dir), tok, "agent")
    rows = oracle.evaluate_world(agent, conds, cfg.task, cfg.eval.samples_per_condition, cfg.seed + 11, world)
    atomic_write_jsonl(wd.path("oracle", f"{name}.jsonl"), [d.to_json() for d in rows])
    block = oracle.summarize(rows)
    sim = evaluate.load_dialogues(str(wd.path(chats, "dialogues.jsonl")))
    block["transcript"] = oracle.transcript_scores(cfg.task, sim, world)
    block["sim_minus_oracle"] = float(evaluate.rewards(sim).mean() - block["expected_mean"])
    out[name] = block
  return out


def stage_report(cfg, wd: Workdir) -> dict:
  files = pair_files(wd)
  pairs = read_pair_files([str(f) for f in files]) if files else []  # a repeated row: one line, not counted twice
  sft = evaluate.load_dialogues(str(wd.path("eval_sft", "dialogues.jsonl")))
  dpo = evaluate.load_dialogues(str(wd.path("eval_dpo", "dialogues.jsonl")))
  search_stats = report.search_stats_from_pairs(pairs) if pairs else None
  rep = report.build_report(cfg.task, sft, dpo, len(pairs), wd.wall_seconds(), search_stats=search_stats,
                            seed=cfg.seed)
  if cfg.eval.heldout_simulator:  # the same agents against the simulator the search never queried
    held = [evaluate.load_dialogues(str(wd.path(f"eval_{w}", "heldout", "dialogues.jsonl"))) for w in ("sft", "dpo")]
    rep["extra"]["heldout_simulator"] = report.heldout_simulator(*held, seed=cfg.seed)
  n_rounds = int(cfg.search_dpo_rounds)
  if n_rounds > 1:  # each round's agent on the same conditions (the last one is the report's dpo)
    agents = [evaluate.load_dialogues(str(wd.path("eval_dpo", f"round-{r}", "dialogues.jsonl")))
              for r in range(1, n_rounds)] + [dpo]
    files = [[str(f) for f in pair_files(wd, r)] for r in range(1, n_rounds + 1)]
    counts = [len(read_pair_files(fs)) if fs else 0 for fs in files]
    rep["extra"]["rounds"] = report.rounds_table(sft, agents, counts, seed=cfg.seed)
  if cfg.data.source == "sandbox":  # the world itself as the user (engage_jax.oracle)
    rep["oracle"] = oracle_report(cfg, wd)
  summary_path = wd.path("search", "summary.json")
  if summary_path.is_file():  # unparsed outcomes inside the trees (P4G): not backed up, counted here
    ss = json.loads(summary_path.read_text())
    rep["extra"]["search_outcomes"] = {k: ss[k] for k in ("children", "unparsed", "unparsed_rate",
                                                          "trees_with_variance", "tree_variance_share") if k in ss}
  report.write_report(str(wd.root), rep, sft_dialogues=sft, dpo_dialogues=dpo, search_stats=search_stats)
  return {"p_value": rep["p_value"]}


STAGE_FNS: dict[str, Callable] = {
    "tokenizer": stage_tokenizer,
    "sft_agent": lambda cfg, wd: stage_sft(cfg, wd, "agent"),
    "sft_simulator": lambda cfg, wd: stage_sft(cfg, wd, "simulator"),
    "sft_heldout_simulator": lambda cfg, wd: stage_sft(cfg, wd, "heldout_simulator"),
    "eval_sft": lambda cfg, wd: stage_evaluate(cfg, wd, "sft"),
    "search": stage_search,
    "dpo": stage_dpo,
    "rounds": stage_rounds,
    "eval_dpo": lambda cfg, wd: stage_evaluate(cfg, wd, "dpo"),
    "report": stage_report,
}


def _stage_metrics(wd: Workdir, stage: str) -> Path | None:
  """The metrics.jsonl that shows a stage's progress (training and search stages)."""
  sub = {"sft_agent": "sft_agent", "sft_simulator": "sft_simulator", "sft_heldout_simulator": "sft_heldout_simulator",
         "dpo": "dpo_agent", "search": "search"}
  return wd.path(sub[stage], "metrics.jsonl") if stage in sub else None


def _jsonable(v) -> bool:
  try:
    json.dumps(v)
    return True
  except TypeError:
    return False


# Config keys each stage's outputs depend on (prefixes; a stage also depends on its ancestors'
# keys). IGNORED never change an output; RESUMABLE may change when an unfinished training stage
# resumes (e.g. a lower learning rate after a NaN stop), and the change is recorded.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("task", "seed", "data", "tokenizer"),
    "sft_agent": ("model.dtype", "model.param_dtype", "model.agent", "sft"),
    "sft_simulator": ("model.dtype", "model.param_dtype", "model.simulator", "sft", "eval.heldout_simulator"),
    "sft_heldout_simulator": ("model.dtype", "model.param_dtype", "model.simulator", "sft", "eval.heldout_simulator"),
    "eval_sft": ("eval", "reward"),
    "search": ("search", "reward"),
    "dpo": ("dpo",),
    "rounds": ("search_dpo_rounds",),
    "eval_dpo": ("eval", "reward"),
    "report": (),
}
STAGE_EXCLUDE = {"sft_agent": ("sft.simulator_steps",), "sft_simulator": ("sft.agent_steps",),
                 "sft_heldout_simulator": ("sft.agent_steps",)}
IGNORED = ("name", "mesh", "model.remat", "model.scan_layers", "*.log_every", "*.eval_every", "*.checkpoint_every",
           "*.keep_checkpoints", "data.max_valid_dialogues", "search.trees_in_flight")
RESUMABLE = tuple(f"{s}.{k}" for s in ("sft", "dpo")
                  for k in ("learning_rate", "warmup_steps", "weight_decay", "grad_clip"))


def ancestors(stage: str) -> tuple[str, ...]:
  return tuple(s for s in with_dependencies((stage,)) if s != stage)


def downstream(stages) -> tuple[str, ...]:
  """`stages` plus every stage that (transitively) depends on one of them, in pipeline order."""
  out = set(stages)
  for s in STAGES:
    if any(a in out for a in ancestors(s)):
      out.add(s)
  return tuple(s for s in STAGES if s in out)


def stage_values(flat: dict, stage: str) -> dict:
  """The config values (flattened keys) that `stage`'s outputs depend on, ancestors' included."""
  out = {}
  for s in (*ancestors(stage), stage):
    out.update(select(flat, STAGE_KEYS[s], IGNORED + STAGE_EXCLUDE.get(s, ())))
  return out


def _check_names(names, what: str) -> None:
  bad = [s for s in names if s not in STAGE_FNS]
  if bad:
    raise InputError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}", what)


def missing_dependencies(wd: Workdir, stages, redo, force: bool = False) -> list:
  """InputErrors (--stages) for each stage to run whose direct dependencies are neither done (and
  kept) in `wd` nor among `stages` (`run` runs exactly `stages`; the stage launchers add what is
  needed with `with_dependencies`)."""
  out = []
  for s in stages:
    if wd.is_done(s) and s not in redo and not force:
      continue
    need = [a for a in DEPENDS[s] if a not in stages and (a in redo or not wd.is_done(a))]
    if need:
      out.append(InputError(f"stage {s} needs {', '.join(need)}, which {'is' if len(need) == 1 else 'are'} "
                            "not done in this workdir; add it to --stages, or leave --stages out (done "
                            "stages are skipped)", "--stages"))
  return out


def plan_conflicts(wd: Workdir, values: dict, stages, redo) -> list:
  """InputErrors for the stages (of `stages` and what they need) whose recorded config values
  differ where they matter; a stage whose ancestor conflicts is not reported again."""
  bad, out = set(), []
  for s in with_dependencies(stages):
    if s in redo or any(a in bad for a in ancestors(s)):
      continue
    changed = wd.conflicts(s, values[s], RESUMABLE)
    if not changed:
      continue
    bad.add(s)
    shown = ", ".join(f"{k}={old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:3])
    more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
    then = [d for d in downstream((s,)) if d != s]
    out.append(InputError(
        f"stage {s} ran with other values of the config keys it depends on: {shown}{more}; rerun it "
        f"with --redo={s}" + (f" (also reruns {', '.join(then)})" if then else "") +
        " or restore those values", str(wd.path("stages.json"))))
  return out


def run(cfg, workdir: str, stages: tuple[str, ...] = STAGES, force: bool = False,
        redo: tuple[str, ...] = ()) -> Workdir:
  """Runs `stages` in order into `workdir`, skipping done ones (unless `force` for a stage that the
  user names explicitly — never the default). `redo`: stages to rerun from scratch, with
  everything downstream of them (their outputs are removed; the other done stages are kept).

  Everything that can be known up front is checked before anything is written: the config, the
  workdir, and each stage's recorded config values against the current ones (see STAGE_KEYS)."""
  _check_names(stages, "--stages")
  _check_names(redo, "--redo")
  config_check.check(cfg)  # every problem of the config at once, before anything is written
  wd = Workdir(workdir)
  wd.check_root()
  config_json = config_to_json(cfg)
  flat = flatten(config_json)
  values = {s: stage_values(flat, s) for s in STAGES}
  redo_all = downstream(redo)
  problems = plan_conflicts(wd, values, stages, redo_all) + missing_dependencies(wd, stages, redo_all, force)
  if problems:
    raise InputErrors(problems)
  problems = preflight.problems(cfg)  # opens the model / tokenizer files: before anything is written
  if problems:
    raise InputErrors(problems)
  wd.lock()  # before the first write: a second run on DIR is refused here
  try:
    wd.adopt_legacy(values)
    wd.open(config_json)
    cleared = wd.clear(redo_all)
    if cleared:
      print(f"[engage_jax] redo: removed the outputs of {', '.join(cleared)}", flush=True)
    for stage in stages:
      if wd.is_done(stage) and not force:
        log.info("stage %-13s done already: skipped", stage)
        print(f"[engage_jax] stage {stage}: done already, skipped", flush=True)
        continue
      entry = wd.begin(stage, values[stage])
      note = f" (attempt {entry['attempts']})" if entry["attempts"] > 1 else ""
      if entry.get("changes") and entry["changes"][-1]["attempt"] == entry["attempts"]:
        changed = [k for k in entry["changes"][-1] if k != "attempt"]
        note += f", resuming with changed {', '.join(changed)}"
      print(f"[engage_jax] stage {stage}: running{note}", flush=True)
      t0 = time.perf_counter()
      try:
        with progress.heartbeat(stage, metrics=_stage_metrics(wd, stage)):
          info = STAGE_FNS[stage](cfg, wd) or {}
      except BaseException as e:
        wd.end(stage, time.perf_counter() - t0, done=False)
        try:
          e.engage_stage = stage  # errors.line names the stage of an error without a place
        except AttributeError:
          pass
        raise
      dt = time.perf_counter() - t0
      wd.end(stage, dt, done=True, **{"info": info} if _jsonable(info) else {})
      print(f"[engage_jax] stage {stage}: done in {dt:.1f}s", flush=True)
  finally:
    wd.unlock()
  return wd


DEPENDS: dict[str, tuple[str, ...]] = {
    "tokenizer": (),
    "sft_agent": ("tokenizer",),
    "sft_simulator": ("tokenizer",),
    "sft_heldout_simulator": ("tokenizer",),
    "eval_sft": ("sft_agent", "sft_simulator", "sft_heldout_simulator"),
    "search": ("sft_agent", "sft_simulator"),
    "dpo": ("search",),
    "rounds": ("dpo",),
    "eval_dpo": ("rounds", "sft_simulator", "sft_heldout_simulator"),
    "report": ("eval_sft", "eval_dpo"),
}


def with_dependencies(stages) -> tuple[str, ...]:
  """`stages` plus everything they need, in pipeline order."""
  need, todo = set(), list(stages)
  while todo:
    s = todo.pop()
    if s not in DEPENDS:
      raise ValueError(f"unknown stage {s!r}; stages: {', '.join(STAGES)}")
    if s not in need:
      need.add(s)
      todo.extend(DEPENDS[s])
  return tuple(s for s in STAGES if s in need)
