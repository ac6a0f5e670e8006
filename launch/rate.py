"""Human evaluation: blinded A/B chats with the SFT and DPO agents, ratings, statistics.

  python launch/rate.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es --invite=10
  python launch/rate.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es [--port=8000]
  python launch/rate.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es --report

--invite prints N invite links (tokens stored hashed in DIR/human_eval/rate.sqlite); the default
serves the app on 127.0.0.1 and prints the admin token (only Host headers 127.0.0.1, localhost,
--host, the --base_url host and --allowed_hosts are answered); --report adds the human block to
report.json (extra.human) and report.md. See docs/human_eval.md.
"""
from absl import flags

import _common

from engage_jax.human_eval import study

_INVITE = flags.DEFINE_integer("invite", 0, "Create this many invite links, print them and exit.")
_REPORT = flags.DEFINE_bool("report", False, "Write the human block into report.json / report.md and exit.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (127.0.0.1 unless told otherwise).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to serve on.")
_BASE_URL = flags.DEFINE_string("base_url", "", "Base of printed invite links (default http://HOST:PORT).")
_ALLOWED_HOSTS = flags.DEFINE_list("allowed_hosts", [], "Host header values to answer besides 127.0.0.1, "
                                   "localhost, --host and the host of --base_url (others get 400).")
_DB = flags.DEFINE_string("db", "", "Study database (default DIR/human_eval/rate.sqlite).")
_SCENARIOS = flags.DEFINE_integer("scenarios", 1, "Held-out conditions (A/B pairs) per rater.")
_N_CONDITIONS = flags.DEFINE_integer("n_conditions", 0, "Scenario pool: the first N held-out conditions "
                                     "(0 = config.eval.n_conditions).")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 500, "Longest rater message (characters).")
_MAX_AGENT_TURNS = flags.DEFINE_integer("max_agent_turns", 0, "Agent-turn cap per chat "
                                        "(0 = config.eval.max_agent_turns).")
_MIN_USER_TURNS = flags.DEFINE_integer("min_user_turns", 1, "Rater messages before a chat can be ended.")
_ADMIN_TOKEN = flags.DEFINE_string("admin_token", "", "Admin token (default: a new random one, printed).")
_WARM_UP = flags.DEFINE_bool("warm_up", True, "Compile the sampler before serving.")


def main():
  cfg, wd = _common.config(), _common.workdir()
  study.check_port(_PORT.value)
  base = _BASE_URL.value or f"http://{_HOST.value}:{_PORT.value}"
  if _INVITE.value:
    for link in study.invite(cfg, wd, _INVITE.value, base, db=_DB.value or None):
      print(link)
    return
  if _REPORT.value:
    block, written = study.report(cfg, wd, db=_DB.value or None)
    print(f"human evaluation: {block['n_raters']} raters, {block['n_sessions']} rated sessions, "
          f"{block['excluded']['count']} excluded")
    for path in written.values():
      print(f"wrote {path}")
    return
  app, token = study.build_app(
      cfg, wd, db=_DB.value or None, n_conditions=_N_CONDITIONS.value, admin_token=_ADMIN_TOKEN.value or None,
      warm_up=_WARM_UP.value, scenarios=_SCENARIOS.value, max_chars=_MAX_CHARS.value,
      max_agent_turns=_MAX_AGENT_TURNS.value, min_user_turns=_MIN_USER_TURNS.value,
      allowed_hosts=study.allowed_hosts(_HOST.value, base, _ALLOWED_HOSTS.value))
  from engage_jax.human_eval.app import serve  # noqa: PLC0415 (optional dependency: starlette, serving only)
  print(f"admin token: {token}", flush=True)
  print(f"serving on {base} (invite links: launch/rate.py ... --invite=N)", flush=True)
  serve(app, _HOST.value, _PORT.value)


if __name__ == "__main__":
  _common.run(main)
