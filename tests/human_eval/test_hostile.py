"""Hostile inputs to the human-evaluation server (issue 26 part 5), in-process (Starlette
TestClient, scripted agents) and through launch/rate.py's checks: valid-but-hostile JSON is a 4xx
that leaves the app working, a second invite in one browser does not orphan the first rater, the
Host allow-list, --port out of range, --invite on a workdir without the DPO agent."""
from __future__ import annotations

import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from engage_jax.errors import InputError
from engage_jax.human_eval import study

from .conftest import OVERRIDES, REPO
from .test_app import RATING, chat, claim, make


@pytest.mark.parametrize("raw,error", [
    (b'{"text": "\\ud800"}', "invalid JSON: not UTF-8 text (surrogates not allowed)"),
    (b'{"text": "hi", "turn": ' + b"9" * 5000 + b"}", "invalid JSON: Exceeds the limit (4300 digits) for integer "
                                                      "string conversion: value has 5000 digits"),
    (b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "invalid JSON: nested too deeply"),
])
def test_hostile_json_is_a_4xx_and_the_next_request_works(tmp_path, raw, error):
  store, agents, app = make(tmp_path)
  client = claim(app, store)
  client = TestClient(app, raise_server_exceptions=False, cookies=client.cookies)
  r = client.post("/api/message", content=raw, headers={"content-type": "application/json"})
  assert (r.status_code, r.json()) == (400, {"error": error})
  st = client.get("/api/state").json()
  assert st["chat"]["turns"] == [] and agents.calls == []   # nothing stored, no model call
  r = client.post("/api/message", json={"text": "hello", "turn": 0})
  assert r.status_code == 200 and [t["text"] for t in r.json()["chat"]["turns"]] == ["hello", "reply 1"]


def test_second_invite_in_one_browser_keeps_the_first_rater(tmp_path):
  store, _, app = make(tmp_path)
  client = claim(app, store)
  first = client.cookies.get("rater")
  client.post("/api/message", json={"text": "hello", "turn": 0})
  second = store.create_invites(1)[0]
  r = client.get(f"/r/{second}", follow_redirects=False)
  assert r.status_code == 409 and "already rating with another invite link" in r.text
  assert client.cookies.get("rater") == first and "set-cookie" not in r.headers
  assert [t["text"] for t in client.get("/api/state").json()["chat"]["turns"]] == ["hello", "reply 1"]
  fresh = TestClient(app)   # another browser takes the second link: it was not used up
  assert fresh.get(f"/r/{second}", follow_redirects=False).status_code == 303
  third = store.create_invites(1)[0]
  chat(client, 1)
  chat(client, 1)
  assert client.post("/api/rate", json={"ratings": {"A": RATING, "B": RATING}, "preference": "A"}).status_code == 200
  assert client.get(f"/r/{third}", follow_redirects=False).status_code == 303   # done: the browser may go on
  assert client.cookies.get("rater") != first


def test_host_allow_list(tmp_path):
  store = make(tmp_path)[0]
  from engage_jax.human_eval.app import Settings, create_app
  from .test_app import ADMIN, POOL, ScriptedAgents
  hosts = study.allowed_hosts("127.0.0.1", "https://rate.example.org/study", ["lab.local"])
  assert hosts == ["127.0.0.1", "localhost", "[::1]", "rate.example.org", "lab.local"]
  app = create_app(store, ScriptedAgents(), POOL, Settings(task="es"), ADMIN, allowed_hosts=hosts)
  for host, status in (("127.0.0.1:8000", 200), ("rate.example.org", 200), ("lab.local:80", 200),
                       ("evil.example.com", 400), ("127.0.0.1.evil.com", 400)):
    assert TestClient(app).get("/", headers={"host": host}).status_code == status, host


def test_port_out_of_range_and_invite_without_dpo_agent(tmp_path):
  for port in (0, 70000, -1):
    with pytest.raises(InputError, match=f"must be a TCP port from 1 to 65535; got {port}"):
      study.check_port(port)
  study.check_port(8000)
  wd = tmp_path / "wd"
  (wd / "sft_agent" / "hf").mkdir(parents=True)
  (wd / "sft_agent" / "hf" / "config.json").write_text("{}")
  with pytest.raises(InputError) as e:
    study.invite(None, wd, 3, "http://127.0.0.1:8000")
  assert str(e.value) == (f"{wd}: no dpo_agent/hf: the study compares the SFT and DPO agents; run the pipeline "
                          f"through its dpo stage first")
  assert not (wd / "human_eval").exists()
  r = subprocess.run([sys.executable, "launch/rate.py", "--config=configs/sandbox_es.py", *OVERRIDES,
                      f"--workdir={wd}", "--invite=2", "--port=70000"], cwd=REPO, text=True, capture_output=True,
                     timeout=120)
  assert (r.returncode, r.stderr.strip()) == (2, "error: must be a TCP port from 1 to 65535; got 70000 (--port)")
