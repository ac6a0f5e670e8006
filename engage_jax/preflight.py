"""Checks that open the model and tokenizer files a config names (config_check only looks at
paths and headers), run by `pipeline.run` after the config check and before the workdir is
written, so a bad file fails in seconds rather than after the tokenizer stage:

- `tokenizer.path` loads (tokenizer.json / GGUF metadata with a chat template);
- each pretrained `model.<role>.path` has readable config / GGUF metadata and weight files;
- the tokenizer has no more tokens than each model's vocabulary (ids beyond it have no embedding:
  training would only report a non-finite loss); a BPE to train: `tokenizer.vocab_size` likewise;
- `search` / `eval`: max_prompt_len is within each model's positions (a prompt that leaves no room
  for its new tokens is refused by `sampling` when it occurs), and (with a pretrained tokenizer)
  holds the system prompt with an empty condition.

    problems(cfg) -> list[InputError]   # empty: fine
"""
from __future__ import annotations

from pathlib import Path

from engage_jax.data import chat
from engage_jax.errors import InputError
from engage_jax.models import gguf, hf
from engage_jax.tokenizer import ChatTokenizer

ROLES = ("agent", "simulator")


def _flat(e: BaseException) -> str:
  return " ".join(str(getattr(e, "what", e)).split())[:300]


def _model_dims(path: str, opened: dict) -> tuple[int, int]:
  """(vocab size, max positions) of a pretrained model path; raises on unreadable files."""
  if gguf.is_gguf(path):
    mc = _gguf(path, opened).model_config()
  else:
    mc = hf.read_config(path)
    hf._safetensor_files(Path(path))  # the weights are there (names the missing file)
  return int(mc.vocab_size), int(mc.max_position_embeddings)


def _gguf(path: str, opened: dict):
  """One GGUFFile per path (reading the metadata of a 100 MB file takes seconds)."""
  key = str(Path(path).resolve())
  if key not in opened:
    opened[key] = gguf.open_gguf(path)
  return opened[key]


def _load_tokenizer(path: str, opened: dict):
  if gguf.is_gguf(path):
    return ChatTokenizer(_gguf(path, opened).hf_tokenizer(), str(path))
  return ChatTokenizer.load(path)


def _system_ids(tok, task: str) -> dict[str, int]:
  """Prompt tokens of each role's system prompt alone (empty condition), with the generation prompt."""
  return {"agent": len(tok.apply_chat(chat.agent_messages(task, []), add_generation_prompt=True)),
          "simulator": len(tok.apply_chat(chat.simulator_messages(task, {}, []), add_generation_prompt=True))}


def check_prompt_room(tok, task: str, conds, max_prompt_len: int, key: str) -> str | None:
  """Run by the search and evaluation stages (a trained BPE exists only after its stage), before
  they load a model. InputError (`key`) if the agent's system prompt, or the simulator's without a
  condition, has more than `max_prompt_len` tokens (no prompt can be whole). Returns a warning
  line (or None) when the simulator's system prompt of some of `conds` (with their condition) is
  longer: those prompts are cut inside their system prompt (rollout.Speaker.prompt)."""
  msgs = [chat.agent_messages(task, []), chat.simulator_messages(task, {}, [])]
  msgs += [chat.simulator_messages(task, d.condition, []) for d in conds]
  lens = [len(ids) for ids in tok.encode_batch([tok.render_chat(m, add_generation_prompt=True) for m in msgs])]
  for who, n in (("agent", lens[0]), ("simulator", lens[1])):
    if n > max_prompt_len:
      raise InputError(f"{max_prompt_len} is shorter than the {who}'s system prompt alone ({n} tokens)", key)
  cut = [n for n in lens[2:] if n > max_prompt_len]
  if not cut:
    return None
  return (f"{key}={max_prompt_len} cuts the simulator's system prompt (its condition) of {len(cut)} of "
          f"{len(conds)} conditions (longest {max(cut)} tokens); raise it to keep them whole")


def problems(cfg) -> list[InputError]:
  out: list[InputError] = []
  opened: dict = {}
  tok, tok_n, tok_key = None, int(cfg.tokenizer.vocab_size), "config.tokenizer.vocab_size"
  if cfg.tokenizer.path:
    tok_key = "config.tokenizer.path"
    try:
      tok = _load_tokenizer(cfg.tokenizer.path, opened)
      tok_n = tok.vocab_size
    except Exception as e:
      out.append(InputError(f"cannot load the tokenizer ({type(e).__name__}: {_flat(e)})", tok_key))
      tok_n = None
  positions = {}
  for role in ROLES:
    mc = cfg.model[role]
    if not mc.path:
      positions[role] = int(mc.max_position_embeddings)
      continue
    try:
      vocab, positions[role] = _model_dims(mc.path, opened)
    except Exception as e:
      out.append(InputError(f"cannot load the model ({type(e).__name__}: {_flat(e)})", f"config.model.{role}.path"))
      continue
    if tok_n is not None and tok_n > vocab:
      have = f"has {tok_n} tokens" if tok is not None else f"would have up to {tok_n} tokens"
      out.append(InputError(f"the tokenizer {have}, more than the {role} model's vocabulary of {vocab} "
                            f"({mc.path}): ids >= {vocab} have no embedding", tok_key))
  system = _system_ids(tok, cfg.task) if tok is not None else {}
  for s in ("search", "eval"):
    sec = cfg[s]
    p, key = int(sec.max_prompt_len), f"config.{s}.max_prompt_len"
    for role in ROLES:
      if role in positions and p > positions[role]:
        out.append(InputError(f"{p} is beyond the {role} model's {positions[role]} positions", key))
      if role in system and p < system[role]:
        out.append(InputError(f"{p} is shorter than the {role}'s system prompt alone ({system[role]} tokens)", key))
  return out
