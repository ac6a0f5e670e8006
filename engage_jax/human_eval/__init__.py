"""Human evaluation: a blinded A/B chat-and-rate web app over the SFT and DPO agents.

    python launch/rate.py --config=configs/sandbox_es.py --workdir=DIR --invite=5   # invite links
    python launch/rate.py --config=configs/sandbox_es.py --workdir=DIR              # serve 127.0.0.1:8000
    python launch/rate.py --config=configs/sandbox_es.py --workdir=DIR --report     # human block

Modules: items (what raters rate), store (SQLite: raters, sessions, turns, ratings), agents (the
two models behind the blinded slots), app (Starlette routes, plain HTML/JS in static/), stats
(CIs, paired tests, preference, Spearman vs the simulator), report (report.json / report.md).
See docs/human_eval.md.
"""
