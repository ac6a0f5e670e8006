"""Shared absl plumbing for the launchers: --config (ml_collections file + --config.key=value
overrides; unknown keys are rejected), --workdir, --redo, optional multi-host initialisation,
JAX's persistent compilation cache (--compilation_cache).

Every error is one line on stderr, `error: <what> (<where>)`, with exit code 2: config-file and
override errors, flag errors, bad config values (one line per problem, found before anything is
written), OS and data errors. ENGAGE_DEBUG=1 keeps the traceback.
"""
from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from engage_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sandbox_es.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the run (created; resumed if it exists).")
_REDO = flags.DEFINE_list(
    "redo", None, "Rerun these stages and everything downstream of them (their outputs are removed "
    "first); the other done stages are kept.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Directory of JAX's persistent compilation cache (default: "
    "$ENGAGE_JAX_COMPILATION_CACHE or ~/.cache/engage_jax/xla; 'off' disables).")


def config():
  return _CONFIG.value


def workdir() -> str:
  return _WORKDIR.value


def redo() -> tuple[str, ...]:
  return tuple(_REDO.value or ())


def run(main_fn, require_workdir: bool = True) -> None:
  """app.run(main_fn) with flag checks, logging and one-line errors (exit code 2)."""

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
      raise app.UsageError("--config is required, e.g. --config=configs/sandbox_es.py")
    if require_workdir and not _WORKDIR.value:
      raise app.UsageError("--workdir is required")
    logging.getLogger("engage_jax").setLevel(logging.INFO)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    if _DISTRIBUTED.value:
      import jax
      jax.distributed.initialize()
    from engage_jax import compile_cache
    compile_cache.enable(_COMPILATION_CACHE.value)
    main_fn()

  cli.run_app(_main)


def run_stages(stages: tuple[str, ...]) -> None:
  """Launcher body for one stage: runs `stages` and whatever they need that is not done yet."""

  def main():
    from engage_jax import pipeline
    pipeline.run(config(), workdir(), pipeline.with_dependencies(stages), redo=redo())

  run(main)
