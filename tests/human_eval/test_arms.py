"""The SFT arm is the SFT agent: `Agents.from_workdir` answers "sft" with the workdir's SFT export
and "dpo" with the DPO export (a swap would invert a study), and the app shows a rater the reply of
the model that the store records for that chat."""
from __future__ import annotations

import sqlite3

import jax
import jax.numpy as jnp
from flax import nnx

from engage_jax import build, models
from engage_jax.data import chat
from engage_jax.data.dialogue import Turn
from engage_jax.human_eval.agents import Agents
from engage_jax.human_eval.app import Settings, create_app
from engage_jax.human_eval.store import Store
from engage_jax.tokenizer import ChatTokenizer
from tests.human_eval.test_app import ADMIN, POOL, claim
from tests.test_bad_inputs import _config


def test_agents_from_workdir_serve_each_arm_from_its_own_export(es_workdir):
  """Each arm's reply equals what that export says for the same turns and seed (same program, same
  machine: exactly); the two random models say different things, so a swap could not pass."""
  cfg = _config("sandbox_es", eval__max_prompt_len=96, eval__agent_sampling__max_new_tokens=6)
  agents = Agents.from_workdir(cfg, es_workdir)
  tok = ChatTokenizer.load(es_workdir / "tokenizer")
  own = {name: build.speaker(cfg, cfg.eval, models.from_pretrained(es_workdir / d / "hf"), tok, "agent")
         for name, d in (("sft", "sft_agent"), ("dpo", "dpo_agent"))}
  turns = [Turn("user", "hi . i feel sad because of my job .")]
  differ = 0
  for seed in (0, 1, 2):
    want = {m: chat.strip_end_marker(sp.generate([chat.agent_messages("es", turns)], seed)[0])
            for m, sp in own.items()}
    got = {m: agents.reply(m, turns, seed)[0] for m in ("sft", "dpo")}
    assert got == want, (seed, got, want)
    differ += want["sft"] != want["dpo"]
  assert differ >= 2


def test_agents_load_each_export_with_the_configs_model_settings(es_workdir, monkeypatch):
  """The served models are built as the evaluation builds them (`build.load_model`): the config's
  compute dtype, parameter dtype and remat, not the export's float32 defaults."""
  cfg = _config("sandbox_es", model__dtype="bfloat16", model__param_dtype="bfloat16", model__remat=True)
  served, real = [], build.speaker
  monkeypatch.setattr(build, "speaker", lambda c, section, model, tok, role: (
      served.append(model), real(c, section, model, tok, role))[1])
  Agents.from_workdir(cfg, es_workdir)
  assert len(served) == 2
  for model in served:
    assert model.dtype == jnp.bfloat16 and model.remat is True
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


class _TwoVoices:
  """Scripted agents that say which model they are in words the blinding check does not look for."""

  def reply(self, model, turns, seed):
    return f"{'alpha' if model == 'sft' else 'omega'} {len(turns)}", 1.0


def test_the_rater_sees_the_reply_of_the_recorded_model(tmp_path):
  store = Store(tmp_path / "rate.sqlite", task="es")
  app = create_app(store, _TwoVoices(), POOL, Settings(task="es", max_agent_turns=3), ADMIN)
  client = claim(app, store)
  shown = {}
  for _ in range(2):                                     # chat A, then chat B, two user turns each
    for i in range(2):
      st = client.get("/api/state").json()
      r = client.post("/api/message", json={"text": f"message {i}", "turn": st["chat"]["turn"]})
      assert r.status_code == 200, r.text
    st = client.get("/api/state").json()
    shown[st["chat"]["slot"]] = [t["text"] for t in st["chat"]["turns"] if t["role"] == "agent"]
    assert client.post("/api/end", json={}).status_code == 200
  models_by_slot = dict(sqlite3.connect(store.path).execute("SELECT slot, model FROM conversations").fetchall())
  assert sorted(models_by_slot.values()) == ["dpo", "sft"]
  for slot, texts in shown.items():
    voice = "alpha" if models_by_slot[slot] == "sft" else "omega"
    assert texts == [f"{voice} 1", f"{voice} 3"], (slot, models_by_slot, shown)
