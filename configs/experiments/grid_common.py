"""What the sandbox ablation grids (sandbox_es.py, sandbox_p4g.py, sandbox_delayed_{es,p4g}.py here)
share: the pipeline config they start from and the experiment section
(engage_jax/experiments/runner.py reads it)."""
import importlib.util
import os

import ml_collections

from engage_jax import schema


def pipeline_config(name: str) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(), loaded by path (this directory has files of the same names)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_engage_configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def experiment_section(**overrides) -> ml_collections.ConfigDict:
  """config.experiment with every default (engage_jax/schema.py ExperimentConfig), `overrides` set."""
  e = schema.config_dict(schema.ExperimentConfig())
  e.update(overrides)
  return e


def grid_config(task_config: str, **experiment) -> ml_collections.ConfigDict:
  """The pipeline config `task_config` with the grid's evaluation size and experiment section."""
  c = pipeline_config(task_config)
  c.name = f"experiment_{task_config}"
  c.eval.n_conditions = 100
  c.experiment = experiment_section(**experiment)
  return c


def delayed_grid_config(task_config: str, **experiment) -> ml_collections.ConfigDict:
  """The delayed-effect world's grid (issue 28; configs/experiments/sandbox_delayed_*.py): the
  sandbox world "delayed", chats of exactly DELAYED_TURNS agent turns, and sizes cut to fit a
  shared 2-core machine (SFT agent 120 / simulator 300 steps, search 48 trees x budget 8, DPO 40
  steps, evaluation 48 held-out conditions x 2 samples, no held-out simulator)."""
  c = grid_config(task_config, **{"ensemble_size": 1, **experiment})
  c.name = f"experiment_delayed_{task_config}"
  c.data.sandbox_world = "delayed"
  opening_agent_turns = 0 if c.task == "es" else 1   # P4G: the greeting
  c.search.max_turns = 3 + opening_agent_turns
  c.search.max_depth = 3
  c.eval.max_agent_turns = 3 + opening_agent_turns
  c.sft.agent_steps = 120
  c.sft.simulator_steps = 300
  c.search.n_conditions = 48
  c.dpo.steps = 40
  c.eval.n_conditions = 48
  return c
