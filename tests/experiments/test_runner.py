"""Experiment runner mechanics with fake steps: shared steps once, resume skips finished variants,
paired table numbers, one-line bad inputs before any work."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engage_jax.errors import InputError
from engage_jax.experiments import runner
from engage_jax.workdir import Workdir

# Tolerances: rewards here are scripted 0/1 values, so means and gains are fractions of 12 (approx,
# relative 1e-6); permutation p-values are bounded to +-0.002 / 0.02 of their exact value (seeded
# Monte-Carlo permutations). Independent of the CPU.

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
CONDS = [f"eval-{i}" for i in range(12)]
# per variant: the conditions (by index) where the agent's reward is 1 under the learned simulator
WINS = {"sft": range(0, 4), "future": range(0, 9), "turn": range(0, 6), "best_of_n": range(0, 5),
        "corpus_mix": range(0, 8), "rft": range(0, 7), "transfer": range(1, 4)}


def _cfg(**exp):
  import importlib.util
  spec = importlib.util.spec_from_file_location("_exp_sandbox_es", REPO / "configs" / "experiments" / "sandbox_es.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.experiment.update(exp)
  return c


class FakeOps:
  """Records every call; agents are named by their directory, rewards come from WINS."""

  def __init__(self):
    self.calls = []

  def _agent_name(self, agent_dir, n):
    if n:
      return "best_of_n"
    parts = agent_dir.parts
    return "sft" if "base" in parts else parts[-3]

  def _res(self, name, sim="sim-0"):
    shift = 1 if sim != "sim-0" else 0  # a held-out simulator is one condition harder for all
    pc = {c: float(i in WINS[name] and i >= shift) for i, c in enumerate(CONDS)}
    return {"summary": {"reward_mean": float(np.mean(list(pc.values()))), "mean_turns": 2.0},
            "per_condition": pc}

  def base(self, cfg, root):
    """Records the shared stages done in root/stages.json, as pipeline.run does."""
    self.calls.append(("base", cfg.seed))
    wd = Workdir(root)
    for stage in runner.SHARED_STAGES:
      wd.begin(stage, {})
      wd.end(stage, 1.0, done=True)
    return {}

  def simulator(self, cfg, view):
    self.calls.append(("simulator", cfg.seed))
    return {}

  def search(self, cfg, view):
    self.calls.append(("search", cfg.seed, cfg.search.reward_horizon))
    return {"pairs": 10}

  def dpo(self, cfg, view):
    self.calls.append(("dpo", cfg.seed, view.root.name, cfg.dpo.steps))
    return {"total_steps": 7}

  def corpus_mix_pairs(self, cfg, view, search_dir, n):
    self.calls.append(("corpus_pairs", cfg.seed, search_dir.parent.name))
    return {}

  def transfer_pairs(self, cfg, view, files):
    self.calls.append(("transfer_pairs", cfg.seed, tuple(f.name for f in files)))
    return runner.ModelOps().transfer_pairs(cfg, view, files)

  def rft(self, cfg, view, search_dir, steps, lr, min_value):
    self.calls.append(("rft", cfg.seed, search_dir.parent.name))
    return {}

  def sft_eval(self, cfg, base):
    self.calls.append(("eval", cfg.seed, "sft", "sim-0"))
    return self._res("sft")

  def evaluate(self, cfg, tok, agent_dir, sim_dir, out, n=0, look=None):
    name = self._agent_name(agent_dir, n)
    sim = "sim-0" if "base" in sim_dir.parts else sim_dir.parts[-3]
    self.calls.append(("eval", cfg.seed, name, sim))
    return self._res(name, sim)

  def oracle(self, cfg, tok, agent_dir, out, n=0, look=None):
    name = self._agent_name(agent_dir, n)
    self.calls.append(("oracle", cfg.seed, name))
    r = self._res(name)
    r["summary"].update(first_turn_helpful=0.5, unmatched_rate=0.0)
    r["per_condition_expected"] = {c: 0.5 * v + 0.1 for c, v in r["per_condition"].items()}
    return r


def test_shared_steps_once_resume_and_table(tmp_path):
  ops = FakeOps()
  exp = runner.Experiment(_cfg(), tmp_path, ["sft", "future", "corpus_mix"], [0, 1], ops=ops)
  summary = exp.run()
  # shared steps: one base, one held-out simulator, one future search per seed (used 2x)
  for seed in (0, 1):
    assert ops.calls.count(("base", seed)) == 1
    assert ops.calls.count(("simulator", seed + 100)) == 1
    assert ops.calls.count(("search", seed, "future")) == 1
    assert ("corpus_pairs", seed, "future") in ops.calls
    assert ("dpo", seed, "corpus_mix", 7) in ops.calls  # as many DPO steps as future's
  t = summary["variants"]
  assert t["future"]["reward_mean"] == pytest.approx(9 / 12)
  assert t["sft"]["n_units"] == 24
  # paired over 24 (seed, condition) units: future gains on 5 conditions x 2 seeds, loses none ->
  # two-sided sign-flip p = 2 / 2^10 (random flips, n > 16)
  assert t["future"]["p_vs_sft"] == pytest.approx(2 / 2 ** 10, abs=0.002)
  assert t["sft"]["p_vs_sft"] is None and t["future"]["p_vs_future"] is None
  # corpus_mix loses condition 8 in both seeds: 2 non-zero units of equal size -> p = 1/2
  assert t["corpus_mix"]["p_vs_future"] == pytest.approx(0.5, abs=0.02)
  # held-out simulator: both lose condition 0 -> gain (8 - 3) / 12
  assert t["future"]["heldout_gain"] == pytest.approx(5 / 12)
  assert t["future"]["oracle_expected"] == pytest.approx(0.5 * 9 / 12 + 0.1)
  assert t["future"]["sim_minus_oracle"] == pytest.approx(9 / 12 - (0.5 * 9 / 12 + 0.1))

  # resume: nothing finished is recomputed; a new variant runs only its own steps
  ops2 = FakeOps()
  runner.Experiment(_cfg(), tmp_path, ["sft", "future", "corpus_mix", "turn"], [0, 1], ops=ops2).run()
  kinds = {c[0] for c in ops2.calls}
  assert ("base", 0) not in ops2.calls and ("search", 0, "future") not in ops2.calls
  assert all(c[2] == "turn" for c in ops2.calls if c[0] in ("search", "dpo", "eval", "oracle"))
  assert kinds == {"search", "dpo", "eval", "oracle"}
  assert ops2.calls.count(("search", 0, "turn")) == 1

  runner.write(summary, tmp_path, "es")
  data = json.loads((tmp_path / "experiment.json").read_text())
  for v in ("sft", "future", "corpus_mix"):
    assert {"seeds", "reward_mean", "ci95", "mean_turns", "oracle_mean", "p_vs_sft", "p_vs_future"} <= set(data["variants"][v])
  assert (tmp_path / "reward.png").stat().st_size > 0
  assert "| future | 2 |" in (tmp_path / "experiment.md").read_text()


def test_interrupted_variant_resumes_from_its_finished_steps(tmp_path):
  ops = FakeOps()
  boom = {"n": 0}
  orig = ops.oracle

  def failing_oracle(*a, **k):
    boom["n"] += 1
    raise RuntimeError("killed")

  ops.oracle = failing_oracle
  with pytest.raises(RuntimeError):
    runner.Experiment(_cfg(), tmp_path, ["future"], [0], ops=ops).run()
  ops.oracle = orig
  ops.calls.clear()
  runner.Experiment(_cfg(), tmp_path, ["future"], [0], ops=ops).run()
  assert [c[0] for c in ops.calls] == ["oracle"]


@pytest.mark.parametrize("cfg_kw, variants, match", [
    ({}, ["sft", "bogus"], "unknown variant"),
    ({"ensemble_size": 0}, ["sft"], "ensemble of size 0"),
])
def test_bad_inputs_before_any_work(tmp_path, cfg_kw, variants, match):
  ops = FakeOps()
  with pytest.raises(InputError, match=match):
    runner.Experiment(_cfg(**cfg_kw), tmp_path / "x", variants, [0], ops=ops)
  assert not ops.calls and not (tmp_path / "x").exists()


def test_oracle_on_real_data_is_refused():
  c = _cfg()
  c.data.source = "esconv"
  with pytest.raises(InputError, match="needs the sandbox world"):
    runner.Experiment(c, "/nonexistent/x", ["sft"], [0], ops=FakeOps())


def test_launcher_one_line_error(tmp_path):
  """The launcher turns the InputErrors above into one line on stderr, exit 2, nothing written."""
  wd = tmp_path / "exp"
  p = subprocess.run([sys.executable, "launch/experiment.py", "--config=configs/experiments/sandbox_es.py",
                      f"--workdir={wd}", "--variants=sft,nope"], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 2, p.stderr
  lines = [x for x in p.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and "unknown variant(s) 'nope'" in lines[0], p.stderr
  assert not wd.exists()


def test_seeds_with_different_ensemble_sizes_aggregate(tmp_path):
  """A seed run with one held-out simulator and one without: held-out figures from the first only."""
  ops = FakeOps()
  runner.Experiment(_cfg(), tmp_path, ["sft", "future"], [0], ops=ops).run()
  s = runner.Experiment(_cfg(ensemble_size=1), tmp_path, ["sft", "future"], [0, 1], ops=ops).run()
  row = s["variants"]["future"]
  assert row["n_units"] == 24 and row["heldout_gain"] == pytest.approx(5 / 12)
  assert set(row["by_simulator"]) == {"sim-0", "sim-1"}


def test_a_larger_ensemble_adds_only_the_new_simulators_steps(tmp_path):
  """A variant finished with 1 simulator, rerun with ensemble_size=2: the held-out simulator is
  trained and every variant evaluated against it; nothing else is recomputed."""
  ops = FakeOps()
  runner.Experiment(_cfg(ensemble_size=1), tmp_path, ["sft", "future"], [0], ops=ops).run()
  ops.calls.clear()
  s = runner.Experiment(_cfg(ensemble_size=2), tmp_path, ["sft", "future"], [0], ops=ops).run()
  assert sorted(ops.calls) == sorted([("simulator", 100), ("eval", 0, "sft", "sim-1"),
                                      ("eval", 0, "future", "sim-1")])
  assert s["variants"]["future"]["heldout_gain"] == pytest.approx(5 / 12)


def _other_task_pairs(root, seeds, task="p4g", n=3):
  """An experiment dir of the other task with `n` pairs per seed in future/pairs."""
  for seed in seeds:
    d = root / f"seed-{seed}" / "future" / "pairs"
    d.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "meta": {"task": task, "tree_id": i}}
            for i in range(n)]
    (d / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root


def test_transfer_trains_on_the_other_tasks_pairs(tmp_path):
  """transfer: DPO from this task's SFT agent on the other task's future pairs of the same seed,
  no search of its own; evaluated and paired like every variant."""
  other = _other_task_pairs(tmp_path / "other", [0, 1])
  ops = FakeOps()
  s = runner.Experiment(_cfg(transfer_from=str(other)), tmp_path / "exp", ["sft", "transfer"], [0, 1],
                        ops=ops).run()
  for seed in (0, 1):
    assert ("transfer_pairs", seed, ("shard-00000.jsonl",)) in ops.calls
    assert sum(c[:3] == ("dpo", seed, "transfer") for c in ops.calls) == 1
    copied = tmp_path / "exp" / f"seed-{seed}" / "transfer" / "pairs" / "shard-00000.jsonl"
    assert [json.loads(x)["meta"]["task"] for x in copied.read_text().splitlines()] == ["p4g"] * 3
  assert not any(c[0] == "search" for c in ops.calls)
  row = s["variants"]["transfer"]
  # transfer wins conditions 1-3, sft 0-3: one lost unit per seed
  assert row["reward_mean"] == pytest.approx(3 / 12)
  record = json.loads((tmp_path / "exp" / "seed-0" / "transfer" / "stages.json").read_text())["pairs"]
  assert record["done"] and record["info"]["pairs"] == 3 and record["info"]["source_tasks"] == ["p4g"]


@pytest.mark.parametrize("setup, match", [
    ("unset", "needs config.experiment.transfer_from"),
    ("missing_seed", r"no future-search pairs for seed\(s\) 1"),
    ("same_task", "holds es pairs, the task of this experiment"),
])
def test_transfer_bad_inputs_before_any_work(tmp_path, setup, match):
  if setup == "unset":
    cfg = _cfg(transfer_from="")
  else:
    other = _other_task_pairs(tmp_path / "other", [0], task="es" if setup == "same_task" else "p4g")
    cfg = _cfg(transfer_from=str(other))
  ops = FakeOps()
  seeds = [0, 1] if setup == "missing_seed" else [0]
  with pytest.raises(InputError, match=match):
    runner.Experiment(cfg, tmp_path / "x", ["sft", "transfer"], seeds, ops=ops)
  assert not ops.calls and not (tmp_path / "x").exists()


def test_rerun_resumes_and_changed_values_are_refused(tmp_path):
  """A rerun computes nothing; a step whose config values changed is refused before any work
  (naming the step and key), and only the steps that depend on the changed key."""
  runner.Experiment(_cfg(), tmp_path, ["sft", "future", "rft"], [0], ops=FakeOps()).run()
  ops = FakeOps()
  again = runner.Experiment(_cfg(), tmp_path, ["sft", "future", "rft"], [0], ops=ops)
  again.run()
  assert ops.calls == [] and again.ran == []

  records = {p: p.read_text() for p in tmp_path.rglob("stages.json")}
  changed = _cfg()
  changed.dpo.beta = 0.5   # future's DPO (and its evaluations) depend on it; rft does not
  with pytest.raises(InputError) as e:
    runner.Experiment(changed, tmp_path, ["sft", "future", "rft"], [0], ops=ops).run()
  assert "step future/dpo ran with other values" in str(e.value) and "dpo.beta=0.1 -> 0.5" in str(e.value)
  assert "rft/" not in str(e.value) and "sft/" not in str(e.value)
  assert ops.calls == [] and {p: p.read_text() for p in tmp_path.rglob("stages.json")} == records

  # a key only rft reads: the other variants are reused, rft is refused
  steps = _cfg(rft_steps=7)
  runner.Experiment(steps, tmp_path, ["sft", "future"], [0], ops=ops).run()
  assert ops.calls == []
  with pytest.raises(InputError, match=r"step rft/train ran with .*experiment.rft_steps=50 -> 7"):
    runner.Experiment(steps, tmp_path, ["rft"], [0], ops=ops).run()
  assert ops.calls == []


def test_old_done_markers_are_adopted_once(tmp_path):
  """The old layout's seed-S/done/<step>.json: adopted as the step's record (not rerun), moved
  to done.migrated/; its seconds count in by_step."""
  done = tmp_path / "seed-0" / "done"
  done.mkdir(parents=True)
  (done / "future__search.json").write_text(json.dumps({"result": {"pairs": 10}, "seconds": 5.0}))
  ops = FakeOps()
  s = runner.Experiment(_cfg(ensemble_size=1), tmp_path, ["future"], [0], ops=ops).run()
  assert not any(c[0] == "search" for c in ops.calls) and any(c[:3] == ("dpo", 0, "future") for c in ops.calls)
  assert not (done / "future__search.json").exists()
  assert (tmp_path / "seed-0" / "done.migrated" / "future__search.json").exists()
  record = json.loads((tmp_path / "seed-0" / "future" / "stages.json").read_text())["search"]
  assert record["done"] and record["info"] == {"pairs": 10}
  assert s["wall_seconds"]["by_step"]["future/search"] == 5.0
