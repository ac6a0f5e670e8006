"""The Starlette app: invite → blinded chats A and B → ratings; admin endpoints.

Rater routes (a browser session cookie, set when the invite is opened, identifies the rater):
  GET  /r/<token>      open an invite (403 unknown / used from another browser), → /chat
  GET  /chat           the page (static/index.html + app.js; no build step, no CDN)
  GET  /api/state      scenario, phase ("chat" | "rate" | "done"), the active chat's turns
  POST /api/open       P4G: the agent's opening turn of the active chat
  POST /api/message    {"text", "turn"?}: the rater's turn and the agent's reply (one transaction)
  POST /api/end        end the active chat (the agent-turn cap also ends it)
  POST /api/rate       {"scenario"?, "ratings": {"A": {...}, "B": {...}}, "preference": "A"|"B"}
Admin routes (header `Authorization: Bearer <admin token>`, printed at start-up):
  GET /api/admin/status, POST /api/admin/invites {"n"}, GET /api/admin/report

One browser, one rater: opening a second invite link in a browser whose rater has unrated
scenarios is refused (409; the second link stays unused, for another browser or a private window),
so the first rater's session is never orphaned; once they are done, the browser may take another.
With `allowed_hosts` (launch/rate.py always sets it) other Host headers get 400.

Blinding: chats are named only "A"/"B"; which model is behind a slot is drawn per rater ×
condition (store.claim) and appears in no page, JSON body or header. Errors are
`{"error": "<one line>"}` with a 4xx status. Text is rendered with textContent (and a strict
Content-Security-Policy), so HTML in chat text shows as text.
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import time
from pathlib import Path
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from engage_jax.data.dialogue import AGENT, USER, Turn
from engage_jax.rewards import DONATION_CAP
from engage_jax.human_eval import conditions, items as items_mod, stats
from engage_jax.human_eval.store import SLOTS, Store, StoreError, turn_seed

log = logging.getLogger("engage_jax.human_eval")
STATIC = Path(__file__).with_name("static")
COOKIE = "rater"
MAX_BODY = 64 * 1024
# Test hook (the kill test): while this file exists, a reply is held after generation and before
# its commit, so a test can SIGKILL the server with a turn in flight.
STALL_ENV = "ENGAGE_RATE_STALL_FILE"
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]


@dataclasses.dataclass
class Settings:
  """task: "es" | "p4g"; max_agent_turns: agent-turn cap per chat; min_user_turns: rater turns
  before a chat can be ended; max_chars: longest rater message; scenarios: conditions per rater;
  donation_cap: P4G donation item's maximum; seed: study seed (per-turn sampling seeds)."""
  task: str
  max_agent_turns: int = 4
  min_user_turns: int = 1
  max_chars: int = 500
  scenarios: int = 1
  donation_cap: float = DONATION_CAP
  seed: int = 0


class _Headers:
  """ASGI middleware: security headers on every response; request bodies over MAX_BODY → 413."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    length = dict(scope.get("headers") or []).get(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
      resp = JSONResponse({"error": f"request body over {MAX_BODY} bytes"}, status_code=413)
      return await self._with_headers(resp, scope, receive, send)

    async def send_wrapped(message):
      if message["type"] == "http.response.start":
        message.setdefault("headers", [])
        message["headers"] = list(message["headers"]) + SECURITY_HEADERS
      await send(message)
    await self.app(scope, receive, send_wrapped)

  async def _with_headers(self, resp, scope, receive, send):
    resp.raw_headers.extend(SECURITY_HEADERS)
    await resp(scope, receive, send)


def _error(msg: str, status: int) -> JSONResponse:
  return JSONResponse({"error": " ".join(str(msg).split())}, status_code=status)


def create_app(store: Store, agents, pool: list[dict], settings: Settings, admin_token: str,
               allowed_hosts: list[str] | None = None) -> Starlette:
  """The ASGI app over `store`, `agents` (agents.Agents or any object with .reply(model, turns,
  seed) → (text, ms)) and the scenario `pool` ([{"id", "condition"}]). allowed_hosts: the Host
  header values served (Starlette's TrustedHostMiddleware: others get 400); None: any."""
  task_items = items_mod.items(settings.task, settings.donation_cap)

  # ---------------------------------------------------------------- helpers
  def rater(request: Request) -> int:
    return store.rater_of(request.cookies.get(COOKIE))

  async def body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
      raise StoreError("send JSON (Content-Type: application/json)", 415)
    raw = await request.body()
    if len(raw) > MAX_BODY:
      raise StoreError(f"request body over {MAX_BODY} bytes", 413)
    try:
      obj = json.loads(raw or b"{}")
      json.dumps(obj, ensure_ascii=False).encode("utf-8")  # text SQLite and the reply can hold
    except RecursionError:
      raise StoreError("invalid JSON: nested too deeply", 400) from None
    except UnicodeError as e:  # not UTF-8, or a string with a lone surrogate ("\ud800")
      raise StoreError(f"invalid JSON: not UTF-8 text ({e.reason})", 400) from None
    except ValueError as e:  # JSONDecodeError, or an integer beyond Python's 4300-digit limit
      raise StoreError(f"invalid JSON: {e.msg if hasattr(e, 'msg') else str(e).split(';')[0]}", 400) from None
    if not isinstance(obj, dict):
      raise StoreError("the request body must be a JSON object", 400)
    return obj

  def active(rater_id: int):
    sess = store.current(rater_id)
    if sess is None:
      raise StoreError("all your scenarios are done; thank you")
    slot = Store.active_slot(sess)
    return sess, slot

  def as_turns(rows) -> list[Turn]:
    return [Turn(AGENT if t["role"] == "agent" else USER, t["text"]) for t in rows]

  def public_turns(rows) -> list[dict]:
    return [{"role": "agent" if t["role"] == "agent" else "you", "text": t["text"]} for t in rows]

  def state(rater_id: int) -> dict:
    """The rater's view: nothing in it depends on which model is behind a slot."""
    sess = store.current(rater_id)
    base = {"task": settings.task, "limits": {"max_chars": settings.max_chars,
                                              "max_agent_turns": settings.max_agent_turns,
                                              "min_user_turns": settings.min_user_turns}}
    if sess is None:
      return dict(base, phase="done")
    out = dict(base, scenario={"index": sess["position"], "number": sess["position"] + 1, "total": sess["total"],
                               "instructions": conditions.INSTRUCTIONS[settings.task],
                               "fields": conditions.display(sess["condition"])})
    slot = Store.active_slot(sess)
    if slot is None:
      out.update(phase="rate", items=[it.to_json() for it in task_items],
                 chats={s: public_turns(sess["conversations"][s]["turns"]) for s in SLOTS})
      return out
    cv = sess["conversations"][slot]
    n_agent = sum(t["role"] == "agent" for t in cv["turns"])
    n_user = len(cv["turns"]) - n_agent
    out.update(phase="chat", chat={
        "slot": slot, "turns": public_turns(cv["turns"]), "turn": len(cv["turns"]),
        "agent_turns": n_agent, "agent_opens": settings.task == "p4g",
        "needs_opening": settings.task == "p4g" and not cv["turns"],
        "can_end": n_user >= settings.min_user_turns})
    return out

  def stall() -> None:
    path = os.environ.get(STALL_ENV)
    if path and os.path.exists(path):
      Path(path + ".reached").write_text("reached")
      while os.path.exists(path):
        time.sleep(0.05)

  def agent_turn(cv, turns: list[Turn], idx: int) -> dict:
    seed = turn_seed(settings.seed, cv["id"], idx)
    text, ms = agents.reply(cv["model"], turns, seed)
    return {"role": "agent", "text": text, "seed": seed, "latency_ms": ms}

  # ---------------------------------------------------------------- rater routes
  def index(request: Request):
    return PlainTextResponse("Human evaluation: open the invite link you were given.")

  def invite(request: Request):
    try:
      _, cookie = store.claim(request.path_params["token"], request.cookies.get(COOKIE), pool,
                              settings.scenarios)
    except StoreError as e:
      return PlainTextResponse(f"{e.status}: {e}", status_code=e.status)
    resp = RedirectResponse("/chat", status_code=303)
    if cookie:
      resp.set_cookie(COOKIE, cookie, max_age=90 * 24 * 3600, httponly=True, samesite="lax", path="/")
    return resp

  def page(request: Request):
    try:
      rater(request)
    except StoreError as e:
      return PlainTextResponse(f"{e.status}: {e}", status_code=e.status)
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

  def get_state(request: Request):
    return JSONResponse(state(rater(request)))

  def post_json(fn: Callable[[Request, dict], dict]):
    """An async endpoint: parses the JSON body, runs `fn(request, body)` in a worker thread (model
    calls and SQLite never block the event loop) and answers its dict as JSON."""
    async def endpoint(request: Request):
      from starlette.concurrency import run_in_threadpool  # noqa: PLC0415 (optional dependency: starlette)
      obj = await body(request)
      return JSONResponse(await run_in_threadpool(fn, request, obj))
    return endpoint

  def _open(request: Request, obj: dict):
    rid = rater(request)
    sess, slot = active(rid)
    if slot is None:
      raise StoreError("both chats have ended; rate them")
    if settings.task != "p4g":
      raise StoreError("you open this chat: send a message")
    cv = sess["conversations"][slot]
    if cv["turns"]:
      raise StoreError("this chat has already been opened")
    turn = agent_turn(cv, [], 0)
    stall()
    store.add_turns(cv["id"], 0, [turn], cap=settings.max_agent_turns)
    return state(rid)

  def _message(request: Request, obj: dict):
    rid = rater(request)
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
      raise StoreError("'text' must be a non-empty string", 400)
    text = text.strip()
    if len(text) > settings.max_chars:
      raise StoreError(f"message too long: {len(text)} characters, at most {settings.max_chars}", 413)
    sess, slot = active(rid)
    if slot is None:
      raise StoreError("both chats have ended; rate them")
    cv = sess["conversations"][slot]
    n = len(cv["turns"])
    if "turn" in obj and obj["turn"] != n:
      raise StoreError("the chat has changed since this message was sent; reload the page")
    if settings.task == "p4g" and n == 0:
      raise StoreError("the agent opens this chat: wait for its first message")
    turns = as_turns(cv["turns"]) + [Turn(USER, text)]
    reply = agent_turn(cv, turns, n + 1)
    stall()
    store.add_turns(cv["id"], n, [{"role": "user", "text": text}, reply], cap=settings.max_agent_turns)
    return state(rid)

  def _end(request: Request, obj: dict):
    rid = rater(request)
    sess, slot = active(rid)
    if slot is None:
      raise StoreError("both chats have already ended; rate them")
    store.end(sess["conversations"][slot]["id"], settings.min_user_turns)
    return state(rid)

  def _rate(request: Request, obj: dict):
    rid = rater(request)
    sess = store.current(rid)
    if "scenario" in obj:
      pos = obj["scenario"]
      if sess is None or (isinstance(pos, int) and pos < sess["position"]):
        raise StoreError("this scenario has already been rated")
      if pos != sess["position"]:
        raise StoreError(f"'scenario' must be the current scenario ({sess['position']})", 422)
    if sess is None:
      raise StoreError("all your scenarios are already rated")
    if Store.active_slot(sess) is not None:
      raise StoreError("finish both chats before rating them")
    try:
      values = items_mod.check_ratings(task_items, obj.get("ratings"))
    except ValueError as e:
      raise StoreError(str(e), 422) from None
    pref = obj.get("preference")
    if pref not in SLOTS:
      raise StoreError("'preference' must be \"A\" or \"B\"", 422)
    store.rate(sess["id"], values, pref)
    return state(rid)

  # ---------------------------------------------------------------- admin routes
  def admin(request: Request) -> None:
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), admin_token.encode()):
      raise StoreError("admin endpoints need 'Authorization: Bearer <admin token>'", 401)

  def admin_status(request: Request):
    admin(request)
    return JSONResponse(store.counts())

  def _invites(request: Request, obj: dict):
    admin(request)
    n = obj.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
      raise StoreError("'n' must be an integer from 1 to 1000", 422)
    tokens = store.create_invites(n)
    return {"invites": [f"/r/{t}" for t in tokens]}

  def admin_report(request: Request):
    admin(request)
    block = stats.human_block(store.sessions(), task_items, latencies_ms=store.latencies_ms(),
                              invites={k: v for k, v in store.counts().items() if k in ("invites", "claimed")},
                              seed=settings.seed, n_boot=2000)
    return JSONResponse(block)

  # ---------------------------------------------------------------- errors
  async def on_store_error(request: Request, exc: StoreError):
    return _error(str(exc), exc.status)

  async def on_http(request: Request, exc: HTTPException):
    return _error(exc.detail or "error", exc.status_code)

  async def on_crash(request: Request, exc: Exception):
    log.exception("internal error on %s", request.url.path)
    return _error("internal server error", 500)

  routes = [
      Route("/", index), Route("/r/{token}", invite), Route("/chat", page),
      Route("/api/state", get_state), Route("/api/open", post_json(_open), methods=["POST"]),
      Route("/api/message", post_json(_message), methods=["POST"]),
      Route("/api/end", post_json(_end), methods=["POST"]), Route("/api/rate", post_json(_rate), methods=["POST"]),
      Route("/api/admin/status", admin_status), Route("/api/admin/invites", post_json(_invites), methods=["POST"]),
      Route("/api/admin/report", admin_report),
      Mount("/static", StaticFiles(directory=STATIC), name="static"),
  ]
  app = Starlette(routes=routes, exception_handlers={StoreError: on_store_error, HTTPException: on_http,
                                                     Exception: on_crash})
  if allowed_hosts is not None:
    from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: PLC0415 (optional dependency: starlette)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
  app.add_middleware(_Headers)
  return app


def serve(app, host: str = "127.0.0.1", port: int = 8000) -> None:
  import uvicorn  # noqa: PLC0415 (optional dependency: uvicorn)
  uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)

