"""launch/rate.py as a real server on 127.0.0.1 over a tiny workdir (real sampled replies):
a headless-Chromium rater, 8 concurrent httpx raters, and a SIGKILL mid-turn with a restart.

The three share one server (started once; the kill test restarts it, so it runs last)."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from engage_jax.human_eval.app import STALL_ENV
from engage_jax.human_eval.store import digest

from .conftest import REPO, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LEAK = re.compile(r"sft|dpo", re.I)
ES = {"feeling_better": 4, "empathy": 2, "naturalness": 5}


@pytest.fixture(scope="module")
def server(es_workdir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("server")
  srv = Server(es_workdir, tmp / "server.log", f"--db={tmp / 'rate.sqlite'}",
               env={STALL_ENV: str(tmp / "stall")})
  srv.db, srv.stall = tmp / "rate.sqlite", tmp / "stall"
  srv.start()
  yield srv
  srv.stop()


def _db(srv):
  db = sqlite3.connect(srv.db)
  db.row_factory = sqlite3.Row
  return db


def _rater_id(srv, client) -> int:
  return _db(srv).execute("SELECT id FROM raters WHERE session_hash = ?",
                          (digest(client.cookies.get("rater")),)).fetchone()[0]


def test_browser_rater_chats_rates_and_report(server, tmp_path):
  if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed and could not be (make test runs apt-get install chromium)")
  sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
  invite = server.invites(1)[0]
  evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    page.goto(invite)
    assert page.url.endswith("/chat")
    page.wait_for_selector("#chat:not([hidden])")
    for slot, messages in (("A", ["I feel anxious about my job.", evil]), ("B", ["Work is hard lately.", "Thanks."])):
      assert page.text_content("#chat-title") == f"Chat with agent {slot}"
      for i, text in enumerate(messages):
        page.fill("#message", text)
        page.click("#send")
        page.locator("#turns li").nth(2 * i + 1).wait_for()
        page.wait_for_selector("#send:not([disabled])")
      if slot == "A":
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("#turns img, #turns script").count() == 0
        assert evil in page.locator("#turns li.you").nth(1).text_content()
      page.click("#end")
      page.wait_for_selector("#rate:not([hidden])" if slot == "B" else "#chat-title:text('agent B')")
    html = page.content()
    for name in ("A:feeling_better", "A:empathy", "A:naturalness"):
      page.check(f'input[name="{name}"][value="{ES[name[2:]]}"]')
    for name in ("B:feeling_better", "B:empathy", "B:naturalness"):
      page.check(f'input[name="{name}"][value="3"]')
    page.check('input[name="preference"][value="B"]')
    page.screenshot(path=str(tmp_path / "rate.png"), full_page=True)
    page.click("#submit-rating")
    page.wait_for_selector("#done:not([hidden])")
    assert page.evaluate("window.__pwned === undefined")
    browser.close()
  print(f"screenshots: {tmp_path / 'chat.png'} {tmp_path / 'rate.png'}")
  assert not LEAK.search(html)
  # the rows in SQLite
  db = _db(server)
  rater = db.execute("SELECT id FROM raters WHERE claimed_at IS NOT NULL ORDER BY id DESC").fetchone()[0]
  convs = {r["slot"]: r for r in db.execute(
      "SELECT c.* FROM conversations c JOIN sessions s ON s.id = c.session_id WHERE s.rater_id = ?", (rater,))}
  for slot in "AB":
    turns = db.execute("SELECT role, text, seed FROM turns WHERE conversation_id = ? ORDER BY idx",
                       (convs[slot]["id"],)).fetchall()
    assert [t["role"] for t in turns] == ["user", "agent"] * 2 and convs[slot]["end_reason"] == "rater"
    assert all(t["seed"] is not None for t in turns if t["role"] == "agent")
  assert db.execute("SELECT text FROM turns WHERE conversation_id = ? AND idx = 2",
                    (convs["A"]["id"],)).fetchone()[0] == evil
  got = dict(db.execute("SELECT item, value FROM ratings WHERE conversation_id = ?", (convs["A"]["id"],)).fetchall())
  assert got == ES
  assert db.execute("SELECT model FROM preferences p JOIN sessions s ON s.id = p.session_id WHERE s.rater_id = ?",
                    (rater,)).fetchone()[0] == convs["B"]["model"]
  # the human block of the report
  out = subprocess.run(server.args("--report", f"--db={server.db}"), cwd=REPO, text=True, capture_output=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  human = json.loads((server.workdir / "report.json").read_text())["extra"]["human"]
  assert (human["n_sessions"], human["n_raters"], human["excluded"]["count"]) == (1, 1, 0)
  assert human["items"]["empathy"][convs["A"]["model"]]["mean"] == 2
  assert human["items"]["empathy"][convs["B"]["model"]]["mean"] == 3
  assert human["preference"]["dpo"] == (convs["B"]["model"] == "dpo")
  assert set(human["spearman"]) == set(ES) and human["reply_latency_ms"]["n"] == 4
  assert "Human evaluation" in (server.workdir / "report.md").read_text()


def _rater(srv, invite, i, out, errors):
  """One simulated rater: 2 turns with A, 2 with B, ratings that encode its index."""
  try:
    with httpx.Client(base_url=srv.url, timeout=60, follow_redirects=True) as c:
      assert c.get(invite).status_code == 200
      lat = []
      for _ in range(2):
        for j in range(2):
          t0 = time.perf_counter()
          r = c.post("/api/message", json={"text": f"rater {i} message {j}"})
          lat.append(time.perf_counter() - t0)
          assert r.status_code == 200, r.text
          assert not LEAK.search(r.text) and not any(LEAK.search(v) for v in r.headers.values())
        assert c.post("/api/end", json={}).status_code == 200
      ratings = {"A": {"feeling_better": 1 + i % 5, "empathy": 1 + (i + 1) % 5, "naturalness": 1 + (i + 2) % 5},
                 "B": {"feeling_better": 5 - i % 5, "empathy": 3, "naturalness": 1 + (i * 3) % 5}}
      pref = "A" if i % 2 else "B"
      r = c.post("/api/rate", json={"ratings": ratings, "preference": pref})
      assert r.status_code == 200 and r.json()["phase"] == "done", r.text
      out[i] = {"rater": _rater_id(srv, c), "ratings": ratings, "preference": pref, "latency": lat}
  except Exception as e:
    errors.append(f"rater {i}: {e!r}")


def test_eight_concurrent_raters(server, tmp_path):
  invites = server.invites(8)
  out, errors = {}, []
  threads = [threading.Thread(target=_rater, args=(server, inv, i, out, errors)) for i, inv in enumerate(invites)]
  t0 = time.time()
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=180)
  wall = time.time() - t0
  assert not errors and len(out) == 8, errors
  lat = np.array([x for r in out.values() for x in r["latency"]]) * 1000
  summary = {"raters": 8, "replies": int(lat.size), "p50_ms": float(np.percentile(lat, 50)),
             "p95_ms": float(np.percentile(lat, 95)), "wall_s": wall}
  (tmp_path / "latency.json").write_text(json.dumps(summary))
  print(f"8 concurrent raters: reply latency p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
        f"{summary['replies']} replies in {wall:.1f} s")
  db = _db(server)
  for r in out.values():                                   # every rating stored, none mixed up
    rows = db.execute("SELECT c.slot, r.item, r.value FROM ratings r JOIN conversations c ON c.id = r.conversation_id "
                      "JOIN sessions s ON s.id = c.session_id WHERE s.rater_id = ?", (r["rater"],)).fetchall()
    got = {"A": {}, "B": {}}
    for slot, item, value in rows:
      got[slot][item] = value
    assert got == r["ratings"]
    pref = db.execute("SELECT p.slot FROM preferences p JOIN sessions s ON s.id = p.session_id WHERE s.rater_id = ?",
                      (r["rater"],)).fetchone()[0]
    assert pref == r["preference"]
    texts = [t[0] for t in db.execute("SELECT t.text FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                                      "JOIN sessions s ON s.id = c.session_id WHERE s.rater_id = ? AND t.role = 'user'",
                                      (r["rater"],))]
    assert len(texts) == 4
  ids = [r["rater"] for r in out.values()]
  assert len(set(ids)) == 8
  for i, r in out.items():
    user_texts = {t[0] for t in db.execute(
        "SELECT t.text FROM turns t JOIN conversations c ON c.id = t.conversation_id JOIN sessions s "
        "ON s.id = c.session_id WHERE s.rater_id = ? AND t.role = 'user'", (r["rater"],))}
    assert user_texts == {f"rater {i} message {j}" for j in range(2)}


def test_hostile_json_then_a_normal_request_on_one_connection(server):
  """A lone surrogate, a 5,000-digit number and deep nesting are 400s on a kept-alive connection,
  and the same connection then serves a normal turn (before: 500, and the next request was reset);
  a Host outside the allow-list is 400."""
  with httpx.Client(base_url=server.url, timeout=60, follow_redirects=True) as c:
    assert c.get(server.invites(1)[0]).status_code == 200
    for raw in (b'{"text": "\\ud800"}', b'{"text": "x", "turn": ' + b"9" * 5000 + b"}",
                b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"):
      r = c.post("/api/message", content=raw, headers={"content-type": "application/json"})
      assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON: "), r.text
    r = c.post("/api/message", json={"text": "hello", "turn": 0})
    assert r.status_code == 200 and r.json()["chat"]["turns"][0]["text"] == "hello"
    assert c.get("/", headers={"host": "evil.example.com"}).status_code == 400


def test_sigkill_mid_turn_then_restart_resumes(server):
  invite = server.invites(1)[0]
  c = httpx.Client(base_url=server.url, timeout=60, follow_redirects=True)
  assert c.get(invite).status_code == 200
  assert c.post("/api/message", json={"text": "first", "turn": 0}).status_code == 200
  rater = _rater_id(server, c)
  before = [tuple(r) for r in _db(server).execute(
      "SELECT t.conversation_id, t.idx, t.role, t.text, t.seed FROM turns t ORDER BY t.id")]
  server.stall.write_text("hold")
  failed = []

  def in_flight():
    try:
      c.post("/api/message", json={"text": "in flight", "turn": 2}, timeout=60)
    except httpx.HTTPError as e:
      failed.append(e)
  t = threading.Thread(target=in_flight)
  t.start()
  reached = server.stall.with_name("stall.reached")
  deadline = time.time() + 60
  while not reached.exists() and time.time() < deadline:
    time.sleep(0.05)
  assert reached.exists(), "the reply never reached the stall point"
  server.kill()                                                   # SIGKILL with the turn in flight
  t.join(30)
  assert failed, "the in-flight request should have lost its connection"
  os.remove(server.stall)
  after_kill = [tuple(r) for r in _db(server).execute(
      "SELECT t.conversation_id, t.idx, t.role, t.text, t.seed FROM turns t ORDER BY t.id")]
  assert after_kill == before                                     # committed kept, in-flight turn lost
  server.start()
  st = c.get("/api/state").json()                                 # the same browser cookie resumes
  assert st["phase"] == "chat" and st["chat"]["slot"] == "A"
  assert st["chat"]["turns"][0]["text"] == "first" and st["chat"]["turn"] == 2
  r = c.post("/api/message", json={"text": "in flight", "turn": 2})
  assert r.status_code == 200 and r.json()["chat"]["turn"] == 4
  r = c.post("/api/message", json={"text": "in flight", "turn": 2})  # a replay is refused, not stored twice
  assert r.status_code == 409
  rows = _db(server).execute("SELECT t.idx, t.text FROM turns t JOIN conversations cv ON cv.id = t.conversation_id "
                             "JOIN sessions s ON s.id = cv.session_id WHERE s.rater_id = ? AND cv.slot = 'A' "
                             "ORDER BY t.idx", (rater,)).fetchall()
  assert [i for i, _ in rows] == [0, 1, 2, 3] and [x for _, x in rows][::2] == ["first", "in flight"]
  c.close()
