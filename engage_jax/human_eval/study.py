"""What launch/rate.py does: create invites, serve the app, write the report's human block."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from engage_jax.errors import InputError
from engage_jax.human_eval import items as items_mod, conditions, report as human_report, stats
from engage_jax.human_eval.store import Store
from engage_jax.human_eval.agents import Agents
from engage_jax import evaluate

log = logging.getLogger("engage_jax.human_eval")
DB_NAME = os.path.join("human_eval", "rate.sqlite")


def db_path(workdir: str | Path, db: str | None = None) -> Path:
  return Path(db) if db else Path(workdir) / DB_NAME


def open_store(cfg, workdir: str | Path, db: str | None = None) -> Store:
  if not Path(workdir).is_dir():
    raise InputError("no such workdir; run the pipeline first", str(workdir))
  return Store(db_path(workdir, db), task=cfg.task)


def check_port(port: int) -> None:
  if not 1 <= port <= 65535:
    raise InputError(f"must be a TCP port from 1 to 65535; got {port}", "--port")


def allowed_hosts(host: str, base_url: str = "", extra=()) -> list[str]:
  """Host header values the server answers (TrustedHostMiddleware): loopback names, --host, the
  host of --base_url (the printed links) and `extra` (--allowed_hosts)."""
  names = ["127.0.0.1", "localhost", "[::1]", host, urlsplit(base_url).hostname or "", *extra]
  return list(dict.fromkeys(n for n in names if n))


def check_agents(workdir) -> None:
  """InputError unless the workdir holds both agents the study compares (its HF exports)."""
  missing = [f"{m}_agent/hf" for m in ("sft", "dpo") if not (Path(workdir) / f"{m}_agent" / "hf" / "config.json").is_file()]
  if missing:
    raise InputError(f"no {' and no '.join(missing)}: the study compares the SFT and DPO agents; run the "
                     "pipeline through its dpo stage first", str(workdir))


def invite(cfg, workdir, n: int, base_url: str, db: str | None = None) -> list[str]:
  """n invite links base_url/r/<token> (printed once; only token hashes are stored). Refused for a
  workdir without both agents (links for a study that cannot run)."""
  if n < 1:
    raise InputError(f"must be positive, got {n}", "--invite")
  if not Path(workdir).is_dir():
    raise InputError("no such workdir; run the pipeline first", str(workdir))
  check_agents(workdir)
  store = open_store(cfg, workdir, db)
  return [f"{base_url.rstrip('/')}/r/{t}" for t in store.create_invites(n)]


def settings(cfg, *, scenarios: int = 1, max_chars: int = 500, max_agent_turns: int = 0,
             min_user_turns: int = 1):
  from engage_jax.human_eval.app import Settings  # noqa: PLC0415 (optional dependency: starlette)
  for name, v in (("--scenarios", scenarios), ("--max_chars", max_chars), ("--min_user_turns", min_user_turns)):
    if v < 1:
      raise InputError(f"must be positive, got {v}", name)
  if max_agent_turns < 0:
    raise InputError(f"must be >= 0 (0 = config.eval.max_agent_turns), got {max_agent_turns}", "--max_agent_turns")
  return Settings(task=cfg.task, max_agent_turns=int(max_agent_turns or cfg.eval.max_agent_turns),
                  min_user_turns=min_user_turns, max_chars=max_chars, scenarios=scenarios,
                  donation_cap=float(cfg.reward.donation_cap), seed=int(cfg.seed))


def build_app(cfg, workdir, *, db: str | None = None, n_conditions: int = 0, admin_token: str | None = None,
              warm_up: bool = True, allowed_hosts: list[str] | None = None, **settings_kw):
  """(app, admin token): the workdir's agents loaded, the held-out scenario pool built.
  allowed_hosts: the Host header allow-list (None: any; launch/rate.py always passes one)."""
  from engage_jax.human_eval.app import create_app  # noqa: PLC0415 (optional dependency: starlette)
  st = settings(cfg, **settings_kw)
  if n_conditions < 0:
    raise InputError(f"must be >= 0 (0 = config.eval.n_conditions), got {n_conditions}", "--n_conditions")
  store = open_store(cfg, workdir, db)
  agents = Agents.from_workdir(cfg, workdir)
  if warm_up:
    agents.warm_up()
  token = admin_token or secrets.token_urlsafe(24)
  return create_app(store, agents, conditions.pool(cfg, n_conditions or None), st, token,
                    allowed_hosts=allowed_hosts), token


def sim_dialogues(workdir) -> dict:
  """{"sft"|"dpo": dialogues} of the pipeline's evaluation runs that exist in the workdir."""
  out = {}
  for m in ("sft", "dpo"):
    p = Path(workdir) / f"eval_{m}" / "dialogues.jsonl"
    if p.is_file():
      out[m] = evaluate.load_dialogues(str(p))
  return out


def report(cfg, workdir, db: str | None = None, n_boot: int = 10_000) -> tuple[dict, dict]:
  """(human block, {name: path written}): statistics of the study into the run's report."""
  path = db_path(workdir, db)
  if not path.is_file():
    raise InputError("no study database; create invites and collect ratings first", str(path))
  store = Store(path, task=cfg.task)
  counts = store.counts()
  block = stats.human_block(store.sessions(), items_mod.items(cfg.task, float(cfg.reward.donation_cap)),
                            sim=stats.sim_engagement(sim_dialogues(workdir)), latencies_ms=store.latencies_ms(),
                            invites={"issued": counts["invites"], "claimed": counts["claimed"]},
                            seed=int(cfg.seed), n_boot=n_boot)
  return block, human_report.write(workdir, block)
