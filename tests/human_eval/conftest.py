"""Fixtures of the human-evaluation tests: a tiny finished workdir (BPE tokenizer, two small random
agents as HF exports, simulated evaluation dialogues, report.json/md) and a server launcher."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn

REPO = Path(__file__).resolve().parents[2]
N_CONDITIONS = 4
OVERRIDES = (f"--config.eval.n_conditions={N_CONDITIONS}", "--config.eval.agent_sampling.max_new_tokens=6",
             "--config.eval.max_prompt_len=96", "--config.eval.max_agent_turns=3")


def sim_dialogues(task: str, model: str, n: int = N_CONDITIONS) -> list[Dialogue]:
  """Evaluate-style dialogues: condition ids eval-0..n-1, two samples each, known rewards."""
  out = []
  for i in range(n):
    for k in range(2):
      r = float(k < (i + (model == "dpo")) % 3) if task == "es" else round(0.25 * i + 0.1 * k, 2)
      out.append(Dialogue(f"eval-{i}/s{k}", task, [Turn(USER, "hi"), Turn(AGENT, "hello")], {"x": "y"},
                          {"reward": r, "num_turns": 1, "condition_id": f"eval-{i}", "sample": k, "seed": k}))
  return out


def make_workdir(root: Path, task: str = "es") -> Path:
  """A workdir with what launch/rate.py reads (tiny models: replies are noise, but real samples)."""
  from flax import nnx

  from engage_jax import models, report
  from engage_jax.data import chat, sandbox
  from engage_jax.fileio import atomic_write_jsonl
  from engage_jax.tokenizer import train_bpe
  root.mkdir(parents=True, exist_ok=True)
  texts = [t.text for d in sandbox.generate(task, 30, 0) for t in d.turns] + [chat.END_MARKER]
  tok = train_bpe(texts, 300, root / "tokenizer")
  for seed, name in ((0, "sft_agent"), (1, "dpo_agent")):
    cfg = models.ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                             bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    models.save_pretrained(models.CausalLM(cfg, rngs=nnx.Rngs(seed)), root / name / "hf")
  sft, dpo = sim_dialogues(task, "sft"), sim_dialogues(task, "dpo")
  atomic_write_jsonl(root / "eval_sft" / "dialogues.jsonl", [d.to_json() for d in sft])
  atomic_write_jsonl(root / "eval_dpo" / "dialogues.jsonl", [d.to_json() for d in dpo])
  rep = report.build_report(task, sft, dpo, 10, {"sft": 1.0}, n_boot=200)
  report.write_report(str(root), rep, plots=False)
  return root


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """launch/rate.py serving `workdir` on 127.0.0.1 in a subprocess (stdout to a log file)."""

  def __init__(self, workdir: Path, log: Path, *extra: str, env: dict | None = None, task: str = "es"):
    self.workdir, self.log, self.extra, self.task = workdir, log, extra, task
    self.env = dict(os.environ, **(env or {}))
    self.port, self.proc, self.admin = free_port(), None, None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def args(self, *more: str) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "rate.py"), f"--config=configs/sandbox_{self.task}.py",
            f"--workdir={self.workdir}", *OVERRIDES, *more]

  def start(self, timeout: float = 120) -> Server:
    self.admin = "admin-" + str(self.port)
    out = open(self.log, "a")
    self.proc = subprocess.Popen(self.args(f"--port={self.port}", f"--admin_token={self.admin}", *self.extra),
                                 cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=self.env)
    deadline = time.time() + timeout
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
      try:
        if httpx.get(self.url + "/", timeout=2).status_code == 200:
          return self
      except httpx.HTTPError:
        pass
      time.sleep(0.3)
    raise RuntimeError(f"server did not start in {timeout}s:\n{self.log.read_text()[-3000:]}")

  def invites(self, n: int) -> list[str]:
    r = httpx.post(self.url + "/api/admin/invites", json={"n": n}, timeout=10,
                   headers={"Authorization": f"Bearer {self.admin}"})
    r.raise_for_status()
    return [self.url + p for p in r.json()["invites"]]

  def kill(self) -> None:
    if self.proc and self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(10)

  def stop(self) -> None:
    if self.proc and self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.kill()


@pytest.fixture(scope="session")
def es_workdir(tmp_path_factory) -> Path:
  return make_workdir(tmp_path_factory.mktemp("human_es") / "wd", "es")
