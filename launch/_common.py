"""Shared absl plumbing for the launchers: --config (ml_collections file + --config.key=value
overrides; unknown keys are rejected), --workdir, --redo, optional multi-host initialisation,
JAX's persistent compilation cache (--compilation_cache).

Every error is one line on stderr, `error: <what> (<where>)`, with exit code 2: config-file and
override errors, flag errors, bad config values (one line per problem, found before anything is
written), OS and data errors. ENGAGE_DEBUG=1 keeps the traceback.
"""
from __future__ import annotations

import logging
import os

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags
import jax

from engage_jax import cli, preemption, compile_cache, multihost, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sandbox_es.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the run (created; resumed if it exists).")
_REDO = flags.DEFINE_list(
    "redo", None, "Rerun these stages and everything downstream of them (their outputs are removed "
    "first); the other done stages are kept.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join JAX's multi-controller runtime (jax.distributed.initialize): TPU VMs and "
    "SLURM are auto-detected; elsewhere give --coordinator_address, --num_processes and --process_id.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "With --distributed: host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0..N-1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Directory of JAX's persistent compilation cache (default: "
    "$ENGAGE_JAX_COMPILATION_CACHE or ~/.cache/engage_jax/xla; 'off' disables).")


def config():
  return _CONFIG.value


def workdir() -> str:
  return _WORKDIR.value


def redo() -> tuple[str, ...]:
  return tuple(_REDO.value or ())


def run(main_fn, require_workdir: bool = True, require_config: bool = True) -> None:
  """app.run(main_fn) with flag checks, logging and one-line errors (exit code 2)."""

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None and require_config:
      raise app.UsageError("--config is required, e.g. --config=configs/sandbox_es.py")
    if require_workdir and not _WORKDIR.value:
      raise app.UsageError("--workdir is required")
    logging.getLogger("engage_jax").setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    dist = distributed_args(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if dist is not None:
      jax.distributed.initialize(**dist)
    _log_writes()
    preemption.install()  # SIGTERM / SIGINT stop a stage at its next safe point (engage_jax/preemption.py)
    compile_cache.enable(_COMPILATION_CACHE.value)
    main_fn()

  cli.run_app(_main)


def distributed_args(distributed: bool, coordinator: str | None, num_processes: int | None,
                     process_id: int | None) -> dict | None:
  """kwargs of jax.distributed.initialize (None: stay single-process), checked before JAX starts;
  bad combinations are one-line UsageErrors."""
  explicit = {"--coordinator_address": coordinator, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if not distributed:
    if given:
      raise app.UsageError(f"{', '.join(given)} need(s) --distributed")
    return None
  if not given:
    return {}  # auto-detection (TPU VMs, SLURM, ...)
  if coordinator is None:
    raise app.UsageError(f"{', '.join(given)} need(s) --coordinator_address=host:port")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise app.UsageError(f"--coordinator_address={coordinator!r} must be host:port")
  if num_processes is None or process_id is None:
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id as well")
  if num_processes < 1:
    raise app.UsageError(f"--num_processes={num_processes} must be >= 1")
  if not 0 <= process_id < num_processes:
    raise app.UsageError(f"--process_id={process_id} is out of range 0..{num_processes - 1} "
                         f"(--num_processes={num_processes})")
  out = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
  if os.environ.get("ENGAGE_HEARTBEAT_TIMEOUT_S"):  # local tests: notice a dead peer sooner
    out["heartbeat_timeout_seconds"] = int(os.environ["ENGAGE_HEARTBEAT_TIMEOUT_S"])
  return out


def _log_writes() -> None:
  """ENGAGE_WRITE_LOG=DIR: record this process's file writes under --workdir (tests)."""
  log_dir = os.environ.get("ENGAGE_WRITE_LOG")
  if log_dir and _WORKDIR.value:
    multihost.log_writes(log_dir, _WORKDIR.value)


def run_stages(stages: tuple[str, ...]) -> None:
  """Launcher body for one stage: runs `stages` and whatever they need that is not done yet."""

  def main():
    pipeline.run(config(), workdir(), pipeline.with_dependencies(stages), redo=redo())

  run(main)
