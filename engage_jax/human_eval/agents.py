"""The two agents behind the blinded chats: the workdir's SFT and DPO HF exports.

    agents = Agents.from_workdir(cfg, workdir)
    text, ms = agents.reply("dpo", turns, seed)    # turns: [Turn]; one sampling.generate call

Tokenizer, models and sampling settings are the evaluation's (`build.load_tokenizer`,
`build.load_model`: the config's dtype, param_dtype and remat; `build.speaker`:
`config.eval.agent_sampling` and max_prompt_len), so people meet the agents the simulator met. Generation is serialised by a lock
(one request at a time; the models are shared between the server's threads).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

from engage_jax.data import chat
from engage_jax.data.dialogue import Turn
from engage_jax.errors import InputError
from engage_jax import build, pipeline
from engage_jax.workdir import Workdir

AGENT_DIRS = {"sft": ("sft_agent", "hf"), "dpo": ("dpo_agent", "hf")}  # dpo: the last round's (search_dpo_rounds)


class Agents:
  """{"sft", "dpo"} → a reply function (task, turns, seed) → text."""

  def __init__(self, task: str, speakers: Mapping[str, Callable[[list[dict], int], str]]):
    missing = sorted(set(AGENT_DIRS) - set(speakers))
    if missing:
      raise ValueError(f"Agents: no speaker for {missing}")
    self.task, self._speakers, self._lock = task, dict(speakers), threading.Lock()

  @classmethod
  def from_workdir(cls, cfg, workdir: str | Path) -> Agents:
    wd = Workdir(str(workdir))
    tok_dir = wd.path("tokenizer")
    if not (tok_dir / "tokenizer.json").is_file():
      raise InputError("no tokenizer in the workdir; run the pipeline first", str(tok_dir))
    tok = build.load_tokenizer(wd)
    speakers = {}
    dirs = {"sft": wd.path(*AGENT_DIRS["sft"]), "dpo": pipeline.final_agent_dir(cfg, wd)}
    for name, d in dirs.items():
      if not (d / "config.json").is_file():
        raise InputError(f"no {name.upper()} agent (HF export) there; run the pipeline first", str(d))
      # the config's dtype, param_dtype and remat; LoRA adapters are merged into the HF exports
      model = build.load_model(cfg, d)
      sp = build.speaker(cfg, cfg.eval, model, tok, "agent")
      speakers[name] = lambda msgs, seed, sp=sp: sp.generate([msgs], seed)[0]
    return cls(cfg.task, speakers)

  def reply(self, model: str, turns: Sequence[Turn], seed: int) -> tuple[str, float]:
    """(the agent's next turn, generation milliseconds) after `turns`."""
    msgs = chat.agent_messages(self.task, turns)
    with self._lock:
      t0 = time.perf_counter()
      text = self._speakers[model](msgs, int(seed))
      ms = 1000.0 * (time.perf_counter() - t0)
    return chat.strip_end_marker(text), ms

  def warm_up(self) -> None:
    """One reply per agent (compiles the sampler before the first rater waits for it)."""
    for name in AGENT_DIRS:
      self.reply(name, [], 0)
