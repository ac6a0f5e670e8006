"""The app in-process (Starlette TestClient) with a scripted agent pair: blinding, randomisation,
hashed invites, the chat flow, turn cap, P4G opening, bad input (4xx, one-line errors), admin."""
from __future__ import annotations

import collections
import json
import random
import re
import sqlite3

import pytest
from starlette.testclient import TestClient

from engage_jax.human_eval import items as items_mod
from engage_jax.human_eval.app import Settings, create_app
from engage_jax.human_eval.store import Store, digest

ADMIN = "admin-secret"
POOL = [{"id": f"eval-{i}", "condition": {"emotion_type": "anxiety", "problem_type": "job crisis",
                                           "situation": f"situation {i}"}} for i in range(4)]
LEAK = re.compile(r"sft|dpo", re.I)


class ScriptedAgents:
  """Both models give the same reply (so only an explicit leak could tell them apart); records calls."""

  def __init__(self):
    self.calls = []

  def reply(self, model, turns, seed):
    self.calls.append((model, len(turns), seed))
    return f"reply {len(turns)}", 1.0


def make(tmp_path, task="es", **kw):
  store = Store(tmp_path / "rate.sqlite", task=task)
  agents = ScriptedAgents()
  settings = Settings(task=task, max_agent_turns=kw.pop("max_agent_turns", 3), **kw)
  app = create_app(store, agents, POOL, settings, ADMIN)
  return store, agents, app


def claim(app, store) -> TestClient:
  client = TestClient(app)
  token = store.create_invites(1)[0]
  r = client.get(f"/r/{token}", follow_redirects=False)
  assert r.status_code == 303 and r.headers["location"] == "/chat"
  return client


def no_leak(resp) -> None:
  assert not LEAK.search(resp.text), resp.text
  for k, v in resp.headers.items():
    assert not LEAK.search(k) and not LEAK.search(v), (k, v)


def chat(client, n=2, check=no_leak):
  for i in range(n):
    st = client.get("/api/state").json()
    r = client.post("/api/message", json={"text": f"message {i}", "turn": st["chat"]["turn"]})
    assert r.status_code == 200, r.text
    check(r)
  r = client.post("/api/end", json={})
  assert r.status_code == 200, r.text
  check(r)
  return r.json()


RATING = {"feeling_better": 4, "empathy": 3, "naturalness": 5}


def test_full_flow_is_blinded_and_stored(tmp_path):
  store, agents, app = make(tmp_path)
  client = claim(app, store)
  page = client.get("/chat")
  assert page.status_code == 200 and "text/html" in page.headers["content-type"]
  for resp in (page, client.get("/static/app.js"), client.get("/static/style.css"), client.get("/api/state")):
    no_leak(resp)
  assert "content-security-policy" in page.headers and "script-src 'self'" in page.headers["content-security-policy"]
  assert chat(client)["chat"]["slot"] == "B"
  st = chat(client)
  assert st["phase"] == "rate" and set(st["chats"]) == {"A", "B"} and len(st["chats"]["A"]) == 4
  assert [it["key"] for it in st["items"]] == ["feeling_better", "empathy", "naturalness"]
  r = client.post("/api/rate", json={"scenario": 0, "ratings": {"A": RATING, "B": dict(RATING, empathy=1)},
                                     "preference": "B"})
  assert r.status_code == 200 and r.json()["phase"] == "done"
  no_leak(r)
  # what is stored: every turn with seed and timestamp, ratings per model, the preference by model
  db = sqlite3.connect(store.path)
  convs = dict(db.execute("SELECT slot, model FROM conversations").fetchall())
  assert sorted(convs.values()) == ["dpo", "sft"]
  rows = db.execute("SELECT c.slot, t.idx, t.role, t.text, t.seed, t.created_at FROM turns t "
                    "JOIN conversations c ON c.id = t.conversation_id ORDER BY c.slot, t.idx").fetchall()
  assert [(s, i, role) for s, i, role, *_ in rows] == [
      (s, i, "user" if i % 2 == 0 else "agent") for s in "AB" for i in range(4)]
  assert all((seed is None) == (role == "user") and ts > 0 for _, _, role, _, seed, ts in rows)
  # the agent behind each slot is the one that was called for it
  assert [m for m, *_ in agents.calls] == [convs["A"]] * 2 + [convs["B"]] * 2
  ratings = dict(((m, it), v) for m, it, v in db.execute(
      "SELECT c.model, r.item, r.value FROM ratings r JOIN conversations c ON c.id = r.conversation_id"))
  assert ratings[(convs["A"], "empathy")] == 3 and ratings[(convs["B"], "empathy")] == 1
  assert db.execute("SELECT slot, model FROM preferences").fetchall() == [("B", convs["B"])]


def test_assignment_is_random_per_rater_and_condition_and_balanced(tmp_path):
  store = Store(tmp_path / "r.sqlite", task="es")
  tokens = store.create_invites(40)
  rng = random.Random(0)
  for t in tokens:
    store.claim(t, None, POOL, scenarios=2, rng=rng)
  db = sqlite3.connect(store.path)
  rows = db.execute("SELECT s.rater_id, s.condition_id, c.model FROM sessions s JOIN conversations c "
                    "ON c.session_id = s.id AND c.slot = 'A' ORDER BY s.id").fetchall()
  assert len(rows) == 80
  a_models = collections.Counter(m for _, _, m in rows)
  assert 25 <= a_models["sft"] <= 55                                   # both orders, drawn at random
  by_rater = collections.defaultdict(list)
  for r, _, m in rows:
    by_rater[r].append(m)
  assert sum(len(set(v)) == 2 for v in by_rater.values()) >= 5         # per condition, not per rater
  per_cond = collections.Counter(c for _, c, _ in rows)
  assert max(per_cond.values()) - min(per_cond.values()) <= 1          # least-used conditions first
  assert all(len({c for rr, c, _ in rows if rr == r}) == 2 for r in by_rater)
  # the same draw over the same raters in another order of conditions differs: not a fixed pattern
  assert len({tuple(v) for v in by_rater.values()}) > 1


def test_invite_tokens_are_stored_hashed_and_single_use(tmp_path):
  store, _, app = make(tmp_path)
  token = store.create_invites(1)[0]
  raw = b"".join(p.read_bytes() for p in tmp_path.glob("rate.sqlite*"))
  assert token.encode() not in raw
  db = sqlite3.connect(store.path)
  assert db.execute("SELECT token_hash FROM raters").fetchone()[0] == digest(token)
  first = TestClient(app)
  assert first.get(f"/r/{token}", follow_redirects=False).status_code == 303
  cookie = first.cookies.get("rater")
  assert db.execute("SELECT session_hash FROM raters").fetchone()[0] == digest(cookie)
  assert cookie.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("rate.sqlite*"))
  assert first.get(f"/r/{token}", follow_redirects=False).status_code == 303      # same browser resumes
  other = TestClient(app)
  r = other.get(f"/r/{token}")
  assert r.status_code == 403 and "already been used" in r.text
  r = other.get("/r/not-a-token")
  assert r.status_code == 403 and "unknown invite" in r.text
  for path in ("/chat", "/api/state"):
    assert other.get(path).status_code == 403
  r = other.post("/api/message", json={"text": "hi"})
  assert r.status_code == 403 and "invite" in r.json()["error"]


def _one_line_4xx(r, status, words):
  assert r.status_code == status, (r.status_code, r.text)
  msg = r.json()["error"]
  assert "\n" not in msg and words in msg, msg


def test_bad_input_is_a_clear_4xx(tmp_path):
  store, _, app = make(tmp_path, max_chars=50)
  c = claim(app, store)
  good = {"ratings": {"A": RATING, "B": RATING}, "preference": "A"}
  _one_line_4xx(c.post("/api/rate", json=good), 409, "finish both chats")
  _one_line_4xx(c.post("/api/end", json={}), 409, "at least 1 message")
  _one_line_4xx(c.post("/api/message", json={"text": "x" * 51}), 413, "at most 50")
  _one_line_4xx(c.post("/api/message", json={"text": "   "}), 400, "non-empty")
  _one_line_4xx(c.post("/api/message", json={"txt": "hi"}), 400, "'text'")
  _one_line_4xx(c.post("/api/message", content=b"{bad", headers={"content-type": "application/json"}), 400,
                "invalid JSON")
  _one_line_4xx(c.post("/api/message", content=b"text=hi", headers={"content-type": "text/plain"}), 415, "JSON")
  _one_line_4xx(c.post("/api/message", json=["hi"]), 400, "JSON object")
  _one_line_4xx(c.post("/api/message", json={"text": "hi", "turn": 5}), 409, "reload")
  _one_line_4xx(c.post("/api/message", content=b"{" + b" " * 70_000 + b"}",
                       headers={"content-type": "application/json"}), 413, "bytes")
  chat(c)
  chat(c)
  bad = [({"A": dict(RATING, empathy=6), "B": RATING}, "integer from 1 to 5"),
         ({"A": dict(RATING, empathy=0), "B": RATING}, "integer from 1 to 5"),
         ({"A": dict(RATING, empathy=2.5), "B": RATING}, "integer from 1 to 5"),
         ({"A": dict(RATING, empathy=True), "B": RATING}, "must be a number"),
         ({"A": dict(RATING, empathy="4"), "B": RATING}, "must be a number"),
         ({"A": {"empathy": 3}, "B": RATING}, "missing rating"),
         ({"A": dict(RATING, charm=3), "B": RATING}, "unknown rating item"),
         ({"A": RATING}, "exactly the chats")]
  for ratings, words in bad:
    _one_line_4xx(c.post("/api/rate", json={"ratings": ratings, "preference": "A"}), 422, words)
  _one_line_4xx(c.post("/api/rate", json=dict(good, preference="C")), 422, "preference")
  _one_line_4xx(c.post("/api/rate", json=dict(good, scenario=3)), 422, "current scenario")
  assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 0
  assert c.post("/api/rate", json=dict(good, scenario=0)).status_code == 200
  _one_line_4xx(c.post("/api/rate", json=dict(good, scenario=0)), 409, "already been rated")
  _one_line_4xx(c.post("/api/rate", json=good), 409, "already rated")
  _one_line_4xx(c.post("/api/message", json={"text": "hi"}), 409, "done")
  assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 6
  assert TestClient(app).get("/nope").json() == {"error": "Not Found"}


def test_agent_turn_cap_ends_the_chat(tmp_path):
  store, _, app = make(tmp_path, max_agent_turns=2)
  c = claim(app, store)
  for i in range(2):
    st = c.post("/api/message", json={"text": f"m{i}"}).json()
  assert st["chat"]["slot"] == "B" and st["chat"]["turns"] == []                 # A ended at the cap
  db = sqlite3.connect(store.path)
  assert db.execute("SELECT end_reason FROM conversations WHERE slot='A'").fetchone()[0] == "cap"


def test_p4g_agent_opens_and_donation_item(tmp_path):
  store, agents, app = make(tmp_path, task="p4g", donation_cap=2.0)
  c = claim(app, store)
  st = c.get("/api/state").json()
  assert st["chat"]["needs_opening"] and st["chat"]["agent_opens"]
  _one_line_4xx(c.post("/api/message", json={"text": "hello"}), 409, "agent opens")
  st = c.post("/api/open", json={}).json()
  assert [t["role"] for t in st["chat"]["turns"]] == ["agent"] and not st["chat"]["can_end"]
  _one_line_4xx(c.post("/api/open", json={}), 409, "already been opened")
  for _ in range(2):
    c.post("/api/message", json={"text": "ok"})
    c.post("/api/end", json={})
    if c.get("/api/state").json()["phase"] == "chat":
      c.post("/api/open", json={})
  st = c.get("/api/state").json()
  assert st["phase"] == "rate" and [i["key"] for i in st["items"]] == ["persuaded", "donation", "naturalness"]
  r = {"persuaded": 3, "donation": 2.5, "naturalness": 4}
  _one_line_4xx(c.post("/api/rate", json={"ratings": {"A": r, "B": r}, "preference": "A"}), 422, "between 0 and 2")
  r["donation"] = 0.55
  assert c.post("/api/rate", json={"ratings": {"A": r, "B": r}, "preference": "A"}).status_code == 200


def test_html_in_chat_text_is_returned_as_json_text(tmp_path):
  store, _, app = make(tmp_path)
  c = claim(app, store)
  evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
  r = c.post("/api/message", json={"text": evil})
  assert r.headers["content-type"].startswith("application/json")
  assert r.json()["chat"]["turns"][0]["text"] == evil
  js = c.get("/static/app.js").text
  assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


def test_admin_endpoints_need_the_admin_token(tmp_path):
  store, _, app = make(tmp_path)
  c = TestClient(app)
  for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
    _one_line_4xx(c.get("/api/admin/status", headers=bad), 401, "admin token")
    _one_line_4xx(c.get("/api/admin/report", headers=bad), 401, "admin token")
  h = {"Authorization": f"Bearer {ADMIN}"}
  invites = c.post("/api/admin/invites", json={"n": 3}, headers=h).json()["invites"]
  assert len(invites) == 3 and all(i.startswith("/r/") for i in invites)
  _one_line_4xx(c.post("/api/admin/invites", json={"n": 0}, headers=h), 422, "'n'")
  assert c.get("/api/admin/status", headers=h).json()["invites"] == 3
  assert c.get("/api/admin/report", headers=h).json()["n_sessions"] == 0


def test_task_mismatch_and_items():
  with pytest.raises(ValueError, match="unknown task"):
    items_mod.items("chitchat")
  assert json.dumps([i.to_json() for i in items_mod.items("p4g", 2.0)])
