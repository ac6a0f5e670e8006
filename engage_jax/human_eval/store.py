"""SQLite storage of the study (stdlib sqlite3, WAL, one file): raters, sessions, turns, ratings.

Tables (see SCHEMA): `raters` (invite token and browser-session secret, both stored as SHA-256
only), `sessions` (one scenario of one rater: a held-out condition), `conversations` (chat A and
chat B of a session; which model sits behind each slot is stored here and never sent to a rater),
`turns` (every turn with its timestamp, sampling seed and generation latency), `ratings` (item
values per conversation) and `preferences` (one per session).

Every write is one `BEGIN IMMEDIATE` transaction, committed with synchronous=FULL: a process
killed at any point leaves the last committed state, so a server killed mid-chat loses at most
the turn in flight, and a restart serves open conversations as they were. Unique keys
(conversation, turn index), (conversation, item) and (session) make a replayed write fail
instead of storing twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

from engage_jax import errors
from engage_jax.seeding import sub_seed

MODELS = ("sft", "dpo")
SLOTS = ("A", "B")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
  id INTEGER PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,       -- sha256 of the invite token (the token is never stored)
  session_hash TEXT UNIQUE,              -- sha256 of the browser cookie, set when the invite is opened
  created_at REAL NOT NULL,
  claimed_at REAL);
CREATE TABLE IF NOT EXISTS sessions (
  id INTEGER PRIMARY KEY,
  rater_id INTEGER NOT NULL REFERENCES raters(id),
  position INTEGER NOT NULL,             -- 0-based order of the rater's scenarios
  condition_id TEXT NOT NULL,
  condition TEXT NOT NULL,               -- JSON {field: value}
  created_at REAL NOT NULL,
  rated_at REAL,
  UNIQUE (rater_id, position), UNIQUE (rater_id, condition_id));
CREATE TABLE IF NOT EXISTS conversations (
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id),
  slot TEXT NOT NULL CHECK (slot IN ('A', 'B')),
  model TEXT NOT NULL CHECK (model IN ('sft', 'dpo')),
  created_at REAL NOT NULL,
  ended_at REAL,
  end_reason TEXT CHECK (end_reason IN ('rater', 'cap')),
  UNIQUE (session_id, slot), UNIQUE (session_id, model));
CREATE TABLE IF NOT EXISTS turns (
  id INTEGER PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  idx INTEGER NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('user', 'agent')),
  text TEXT NOT NULL,
  seed INTEGER,                          -- agent turns: the sampling seed
  latency_ms REAL,                       -- agent turns: generation time
  created_at REAL NOT NULL,
  UNIQUE (conversation_id, idx));
CREATE TABLE IF NOT EXISTS ratings (
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  item TEXT NOT NULL,
  value REAL NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (conversation_id, item));
CREATE TABLE IF NOT EXISTS preferences (
  session_id INTEGER PRIMARY KEY REFERENCES sessions(id),
  slot TEXT NOT NULL CHECK (slot IN ('A', 'B')),
  model TEXT NOT NULL CHECK (model IN ('sft', 'dpo')),
  created_at REAL NOT NULL);
"""


class StoreError(ValueError):
  """A request the study's state does not allow; `status` is the HTTP status to answer with."""

  def __init__(self, message: str, status: int = 409):
    super().__init__(message)
    self.status = status


def digest(secret: str) -> str:
  return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
  return secrets.token_urlsafe(24)


def turn_seed(study_seed: int, conversation_id: int, idx: int) -> int:
  """The sampling seed of the agent turn at index `idx` of a conversation (deterministic)."""
  return sub_seed(study_seed, conversation_id, idx)


class Store:
  """The study database at `path` (created with its schema if missing).

  Each method opens its own connection, so one Store is safe to share between threads."""

  def __init__(self, path: str | Path, *, task: str | None = None):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with errors.naming(self.path), self._conn() as c:  # a corrupt file: DatabaseError naming it
      c.execute("PRAGMA journal_mode=WAL")
      c.executescript(SCHEMA)
    if task is not None:
      old = self.meta("task")
      if old is None:
        with self.write() as c:
          c.execute("INSERT OR IGNORE INTO meta VALUES ('task', ?)", (task,))
      elif old != task:
        raise StoreError(f"{self.path} holds a study of task {old!r}, not {task!r}", 400)

  # ------------------------------------------------------------------ connections
  def _conn(self) -> sqlite3.Connection:
    c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
    c.row_factory = sqlite3.Row
    c.execute("PRAGMA foreign_keys=ON")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("PRAGMA busy_timeout=30000")
    return c

  @contextlib.contextmanager
  def read(self) -> Iterator[sqlite3.Connection]:
    c = self._conn()
    try:
      yield c
    finally:
      c.close()

  @contextlib.contextmanager
  def write(self) -> Iterator[sqlite3.Connection]:
    """One transaction (BEGIN IMMEDIATE ... COMMIT; rolled back on any exception)."""
    c = self._conn()
    try:
      c.execute("BEGIN IMMEDIATE")
      try:
        yield c
      except BaseException:
        c.execute("ROLLBACK")
        raise
      c.execute("COMMIT")
    finally:
      c.close()

  def meta(self, key: str) -> str | None:
    with self.read() as c:
      row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None

  # ------------------------------------------------------------------ invites and raters
  def create_invites(self, n: int) -> list[str]:
    """n new invite tokens (returned once; only their hashes are stored)."""
    if n < 1:
      raise StoreError(f"the number of invites must be positive, got {n}", 400)
    tokens = [new_secret() for _ in range(n)]
    now = time.time()
    with self.write() as c:
      c.executemany("INSERT INTO raters (token_hash, created_at) VALUES (?, ?)",
                    [(digest(t), now) for t in tokens])
    return tokens

  def claim(self, token: str, cookie: str | None, pool: Sequence[Mapping[str, Any]], scenarios: int,
            rng: random.Random | None = None) -> tuple[int, str | None]:
    """Opens an invite: (rater id, new cookie or None when the given cookie already owns it).

    First opening: the rater gets a browser secret (stored hashed) and `scenarios` conditions
    from `pool` ([{"id", "condition"}]), those with the fewest sessions so far first, ties at
    random; per scenario the model behind chat A is drawn at random. Unknown token, or a token
    opened before from another browser: StoreError 403. A browser whose cookie belongs to another
    rater with unrated scenarios: StoreError 409 (the token stays unclaimed; no orphaned rater).
    """
    rng = rng or random.SystemRandom()
    with self.write() as c:
      row = c.execute("SELECT id, session_hash FROM raters WHERE token_hash = ?", (digest(token),)).fetchone()
      if row is None:
        raise StoreError("unknown invite link", 403)
      if row["session_hash"] is not None:
        if cookie and secrets.compare_digest(row["session_hash"], digest(cookie)):
          return row["id"], None
        raise StoreError("this invite link has already been used", 403)
      other = c.execute("SELECT id FROM raters WHERE session_hash = ?", (digest(cookie),)).fetchone() if cookie else None
      if other and c.execute("SELECT 1 FROM sessions WHERE rater_id = ? AND rated_at IS NULL LIMIT 1",
                             (other["id"],)).fetchone():
        raise StoreError("this browser is already rating with another invite link; finish that one first, "
                         "or open this link in another browser or a private window", 409)
      if not pool:
        raise StoreError("the study has no scenarios", 500)
      rater, new_cookie, now = row["id"], new_secret(), time.time()
      c.execute("UPDATE raters SET session_hash = ?, claimed_at = ? WHERE id = ?", (digest(new_cookie), now, rater))
      counts = dict(c.execute("SELECT condition_id, COUNT(*) FROM sessions GROUP BY condition_id").fetchall())
      order = sorted(pool, key=lambda p: (counts.get(p["id"], 0), rng.random()))
      for pos, p in enumerate(order[:max(1, int(scenarios))]):
        sid = c.execute("INSERT INTO sessions (rater_id, position, condition_id, condition, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", (rater, pos, p["id"], json.dumps(p["condition"]), now)).lastrowid
        first = rng.choice(MODELS)
        models = (first, MODELS[1 - MODELS.index(first)])
        for slot, model in zip(SLOTS, models):
          c.execute("INSERT INTO conversations (session_id, slot, model, created_at) VALUES (?, ?, ?, ?)",
                    (sid, slot, model, now))
      return rater, new_cookie

  def rater_of(self, cookie: str | None) -> int:
    """The rater whose browser holds `cookie`; StoreError 403 otherwise."""
    if cookie:
      with self.read() as c:
        row = c.execute("SELECT id FROM raters WHERE session_hash = ?", (digest(cookie),)).fetchone()
      if row:
        return row["id"]
    raise StoreError("no rater session: open your invite link first", 403)

  # ------------------------------------------------------------------ state
  def current(self, rater: int) -> dict | None:
    """The rater's first unrated session with its conversations and turns, or None when done."""
    with self.read() as c:
      s = c.execute("SELECT * FROM sessions WHERE rater_id = ? AND rated_at IS NULL ORDER BY position LIMIT 1",
                    (rater,)).fetchone()
      if s is None:
        return None
      total = c.execute("SELECT COUNT(*) FROM sessions WHERE rater_id = ?", (rater,)).fetchone()[0]
      convs = {}
      for cv in c.execute("SELECT * FROM conversations WHERE session_id = ? ORDER BY slot", (s["id"],)):
        turns = [dict(t) for t in c.execute("SELECT idx, role, text, seed, created_at FROM turns "
                                            "WHERE conversation_id = ? ORDER BY idx", (cv["id"],))]
        convs[cv["slot"]] = dict(cv, turns=turns)
    return {"id": s["id"], "position": s["position"], "total": total, "condition_id": s["condition_id"],
            "condition": json.loads(s["condition"]), "conversations": convs}

  @staticmethod
  def active_slot(session: Mapping) -> str | None:
    """The slot being chatted in (A until it ends, then B), or None when both have ended."""
    for slot in SLOTS:
      if session["conversations"][slot]["ended_at"] is None:
        return slot
    return None

  # ------------------------------------------------------------------ writes
  def add_turns(self, conversation_id: int, expected_len: int, new_turns: Sequence[Mapping[str, Any]],
                cap: int | None = None) -> int:
    """Appends turns in one transaction if the conversation still has `expected_len` turns and is
    open; ends it ('cap') when its agent turns reach `cap`. Returns the new length."""
    now = time.time()
    with self.write() as c:
      cv = c.execute("SELECT ended_at FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
      if cv is None:
        raise StoreError("no such conversation", 404)
      if cv["ended_at"] is not None:
        raise StoreError("this chat has ended")
      n = c.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]
      if n != expected_len:
        raise StoreError("the chat has changed since this message was sent; reload the page")
      for i, t in enumerate(new_turns):
        c.execute("INSERT INTO turns (conversation_id, idx, role, text, seed, latency_ms, created_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (conversation_id, n + i, t["role"], t["text"], t.get("seed"),
                                                   t.get("latency_ms"), now))
      agent_turns = c.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ? AND role = 'agent'",
                              (conversation_id,)).fetchone()[0]
      if cap is not None and agent_turns >= cap:
        c.execute("UPDATE conversations SET ended_at = ?, end_reason = 'cap' WHERE id = ?", (now, conversation_id))
      return n + len(new_turns)

  def end(self, conversation_id: int, min_user_turns: int = 1) -> None:
    """Ends an open conversation at the rater's request (after at least `min_user_turns`)."""
    with self.write() as c:
      cv = c.execute("SELECT ended_at FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
      if cv is None or cv["ended_at"] is not None:
        raise StoreError("this chat has already ended")
      n = c.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ? AND role = 'user'",
                    (conversation_id,)).fetchone()[0]
      if n < min_user_turns:
        raise StoreError(f"send at least {min_user_turns} message(s) before ending the chat")
      c.execute("UPDATE conversations SET ended_at = ?, end_reason = 'rater' WHERE id = ?",
                (time.time(), conversation_id))

  def rate(self, session_id: int, values: Mapping[str, Mapping[str, float]], preferred_slot: str) -> None:
    """Stores both chats' ratings and the preference in one transaction; the session is done."""
    if preferred_slot not in SLOTS:
      raise StoreError("'preference' must be \"A\" or \"B\"", 422)
    now = time.time()
    with self.write() as c:
      s = c.execute("SELECT rated_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
      if s is None:
        raise StoreError("no such scenario", 404)
      if s["rated_at"] is not None:
        raise StoreError("this scenario has already been rated")
      convs = {r["slot"]: r for r in c.execute("SELECT * FROM conversations WHERE session_id = ?", (session_id,))}
      if any(convs[slot]["ended_at"] is None for slot in SLOTS):
        raise StoreError("finish both chats before rating them")
      for slot in SLOTS:
        c.executemany("INSERT INTO ratings (conversation_id, item, value, created_at) VALUES (?, ?, ?, ?)",
                      [(convs[slot]["id"], k, float(v), now) for k, v in values[slot].items()])
      c.execute("INSERT INTO preferences (session_id, slot, model, created_at) VALUES (?, ?, ?, ?)",
                (session_id, preferred_slot, convs[preferred_slot]["model"], now))
      c.execute("UPDATE sessions SET rated_at = ? WHERE id = ?", (now, session_id))

  # ------------------------------------------------------------------ analysis (admin only)
  def sessions(self) -> list[dict]:
    """Every session with its per-model ratings, preference and turn counts (unblinded)."""
    with self.read() as c:
      out = []
      for s in c.execute("SELECT * FROM sessions ORDER BY id").fetchall():
        row = {"id": s["id"], "rater_id": s["rater_id"], "condition_id": s["condition_id"],
               "rated": s["rated_at"] is not None, "ratings": {}, "turns": {}, "preferred": None}
        for cv in c.execute("SELECT * FROM conversations WHERE session_id = ?", (s["id"],)).fetchall():
          row["ratings"][cv["model"]] = {r["item"]: r["value"] for r in c.execute(
              "SELECT item, value FROM ratings WHERE conversation_id = ?", (cv["id"],))}
          row["turns"][cv["model"]] = c.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ?",
                                                (cv["id"],)).fetchone()[0]
        p = c.execute("SELECT model FROM preferences WHERE session_id = ?", (s["id"],)).fetchone()
        row["preferred"] = p["model"] if p else None
        out.append(row)
    return out

  def latencies_ms(self) -> list[float]:
    with self.read() as c:
      return [r[0] for r in c.execute("SELECT latency_ms FROM turns WHERE latency_ms IS NOT NULL")]

  def counts(self) -> dict:
    with self.read() as c:
      one = lambda q: c.execute(q).fetchone()[0]
      return {"invites": one("SELECT COUNT(*) FROM raters"),
              "claimed": one("SELECT COUNT(*) FROM raters WHERE session_hash IS NOT NULL"),
              "sessions": one("SELECT COUNT(*) FROM sessions"),
              "rated": one("SELECT COUNT(*) FROM sessions WHERE rated_at IS NOT NULL"),
              "turns": one("SELECT COUNT(*) FROM turns")}
