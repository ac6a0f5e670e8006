"""Everything that turns a config into objects, shared by the pipeline's stages, experiments/,
human_eval/, the memory plan and the export:

    corpus = build.load_corpus(cfg)                       # {"train", "valid", "test"}: [Dialogue]
    tok = build.load_tokenizer(wd)                        # the workdir's ChatTokenizer
    model = build.new_model(cfg, "agent", tok)            # config.model.<role>: dtype, remat, LoRA
    model = build.load_model(cfg, hf_dir)                 # config.model.dtype / param_dtype / remat / scan_layers
    sp = build.speaker(cfg, cfg.eval, model, tok, "agent")  # a rollout.Speaker
    tcfg = build.train_config(cfg, cfg.sft, steps=10)    # train.config.TrainConfig / DPOConfig

The stage graph that calls these is engage_jax.pipeline.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from flax import nnx

from engage_jax import models, readout, rewards, rollout, sharding
from engage_jax.data import esconv, p4g, sandbox, sft as sft_data
from engage_jax.data.dialogue import USER, Dialogue
from engage_jax.models import lora
from engage_jax.models.config import jax_dtype
from engage_jax.sampling import SamplingParams
from engage_jax.search.run import config_from_section
from engage_jax.seeding import sub_seed
from engage_jax.tokenizer import ChatTokenizer, train_bpe
from engage_jax.train.config import DPOConfig, TrainConfig
from engage_jax.workdir import Workdir

log = logging.getLogger("engage_jax")


# ===================================================================== data
def load_corpus(cfg) -> dict[str, list[Dialogue]]:
  """{"train", "valid", "test"} dialogues of the configured source."""
  src, task, seed = cfg.data.source, cfg.task, cfg.seed
  if src == "sandbox":
    world = cfg.data.sandbox_world
    return {"train": sandbox.generate(task, cfg.data.sandbox_train, seed, world=world),
            "valid": sandbox.generate(task, cfg.data.sandbox_valid, seed + 1, world=world),
            "test": []}
  loader = esconv if src == "esconv" else p4g
  out = {}
  for split in ("train", "valid", "test"):
    loaded = loader.load_split(cfg.data.path, split, skip_bad=cfg.data.skip_bad)
    if getattr(loaded, "skipped", 0):
      log.warning("%s/%s: skipped %d bad records", cfg.data.path, split, loaded.skipped)
    out[split] = list(loaded)
  if cfg.data.max_train_dialogues:
    out["train"] = out["train"][:cfg.data.max_train_dialogues]
  if cfg.data.max_valid_dialogues:
    out["valid"] = out["valid"][:cfg.data.max_valid_dialogues]
  keys = [k.strip() for k in cfg.data.condition_keys.split(",") if k.strip()]
  if keys:  # every view (SFT, search, evaluation) then sees only these condition fields
    for split in out.values():
      for d in split:
        d.condition = {k: d.condition[k] for k in keys if k in d.condition}
  return out


def _opening(d: Dialogue) -> list:
  """Turns up to and including the first user turn that follows the agent's first chance to
  speak: ES the seeker's opening; P4G none (the persuader opens)."""
  if d.task == "p4g":
    return []
  for i, t in enumerate(d.turns):
    if t.role == USER:
      return list(d.turns[:i + 1])
  return []


def train_dialogues(cfg, corpus: dict[str, list[Dialogue]], role: str) -> list[Dialogue]:
  """The SFT dialogues of `role`: all training dialogues, except with config.eval.heldout_simulator,
  where the search's simulator trains on the even-indexed half and the held-out simulator on the
  odd-indexed half (disjoint: a gain that exists only for the search's simulator shows up as such)."""
  train = corpus["train"]
  if not cfg.eval.heldout_simulator or role == "agent":
    return train
  return train[0::2] if role == "simulator" else train[1::2]


def roots(cfg, corpus: dict[str, list[Dialogue]], purpose: str, n: int) -> list[Dialogue]:
  """Conversation starts (condition + opening turns): `purpose` "search" (training conditions)
  or "eval" (held-out conditions)."""
  if cfg.data.source == "sandbox":
    offset = {"search": 1000, "eval": 2000}[purpose]
    conds = sandbox.random_conditions(cfg.task, n, cfg.seed + offset)
    return [Dialogue(f"{purpose}-{i}", cfg.task, sandbox.opening_turns(cfg.task, c), c) for i, c in enumerate(conds)]
  split = {"search": "train", "eval": "test"}[purpose]
  pool = corpus[split]
  if purpose == "search":  # a tree needs a condition for its simulator (4 P4G dialogues have no persona)
    empty = [d.id for d in pool if not d.condition]
    if empty:
      log.warning("%d %s dialogues without a condition are not search roots: %s", len(empty), split, empty[:3])
      pool = [d for d in pool if d.condition]
  if len(pool) < n:
    log.warning("only %d %s dialogues for %d %s roots", len(pool), split, n, purpose)
  return [Dialogue(f"{purpose}-{d.id}", d.task, _opening(d), dict(d.condition)) for d in pool[:n]]


def eval_conditions(cfg) -> list[Dialogue]:
  """The held-out conditions of the evaluation (`roots` "eval", config.eval.n_conditions)."""
  corpus = load_corpus(cfg) if cfg.data.source != "sandbox" else {}
  return roots(cfg, corpus, "eval", cfg.eval.n_conditions)


# ===================================================================== tokenizer and models
def make_tokenizer(cfg, wd: Workdir):
  out = wd.path("tokenizer")
  if cfg.tokenizer.path:
    tok = ChatTokenizer.load(cfg.tokenizer.path)
    tok.save(out)
    return tok
  corpus = load_corpus(cfg)
  texts = list(sft_data.tokenizer_texts(corpus["train"]))
  if cfg.data.source == "sandbox":
    texts += sandbox.all_texts(cfg.task, cfg.data.sandbox_world)
  return train_bpe(texts, cfg.tokenizer.vocab_size, out)


def load_tokenizer(wd: Workdir):
  return ChatTokenizer.load(wd.path("tokenizer"))


def new_model(cfg, role: str, tok, adapters: bool = True) -> models.CausalLM:
  """The initial model of `role`: pretrained from `model.<role>.path` or a fresh random one;
  with `model.<role>.lora.rank` > 0 (and `adapters`) carrying LoRA adapters (`with_lora`)."""
  mc = cfg.model[role]
  dtype, param_dtype = jax_dtype(cfg.model.dtype), jax_dtype(cfg.model.param_dtype)
  if mc.path:
    model = load_model(cfg, mc.path)
    return with_lora(cfg, role, model) if adapters else model
  config = models.ModelConfig(
      model_type=mc.model_type, vocab_size=tok.vocab_size, hidden_size=mc.hidden_size,
      intermediate_size=mc.intermediate_size, num_hidden_layers=mc.num_hidden_layers,
      num_attention_heads=mc.num_attention_heads, num_key_value_heads=mc.num_key_value_heads,
      max_position_embeddings=mc.max_position_embeddings, tie_word_embeddings=mc.tie_word_embeddings,
      rope_theta=mc.rope_theta, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  seed = cfg.seed + (0 if role == "agent" else 1)
  model = models.CausalLM(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), remat=cfg.model.remat,
                          scan_layers=cfg.model.scan_layers)
  return with_lora(cfg, role, model) if adapters else model


def with_lora(cfg, role: str, model, fresh: bool = False, rank: int | None = None):
  """`model` with the LoRA adapters of `model.<role>.lora` (in place; rank 0: unchanged): loaded
  from `lora.path` (a PEFT dir) unless `fresh`, else newly initialised (seeded). rank: override."""
  node = cfg.model[role].lora
  lcfg = lora.LoraConfig.from_any(node)
  if rank is not None:
    lcfg = dataclasses.replace(lcfg, rank=rank)
  if not lcfg.enabled:
    return model
  if lcfg.path and not fresh:
    return lora.load_peft(model, lcfg.path)
  seed = cfg.seed + 100 + (0 if role == "agent" else 1)
  return lora.apply_lora(model, lcfg, rngs=nnx.Rngs(seed), where=f"config.model.{role}.lora")


def load_model(cfg, path) -> models.CausalLM:
  return models.from_pretrained(path, dtype=jax_dtype(cfg.model.dtype), param_dtype=jax_dtype(cfg.model.param_dtype),
                                remat=cfg.model.remat, scan_layers=cfg.model.scan_layers)


def save_trained(model, out: Path, base: str = "") -> None:
  """`out/hf`: the model (LoRA adapters merged into the weights) for the later stages and
  transformers; with adapters also `out/adapter`, the PEFT adapter dir (base: the base model's path)."""
  models.save_pretrained(lora.merge(model), out / "hf")
  if lora.has_lora(model):
    lora.save_peft(model, out / "adapter", base_model_name_or_path=str(base))


def make_mesh(cfg):
  return sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def speaker(cfg, section, model, tok, role: str):
  """The `rollout.Speaker` of `role` ("agent" | "simulator") with a config section's settings
  (`config.search` or `config.eval`): max_prompt_len and `<role>_sampling`; `config.rollout.kv_cache`."""
  return rollout.Speaker(model, tok, section.max_prompt_len,
                         sampling=SamplingParams(**section[f"{role}_sampling"].to_dict()),
                         kv_cache=cfg.rollout.kv_cache)


# ===================================================================== stage settings
def train_config(cfg, section, **overrides):
  """The trainer's settings of the `sft` or `dpo` config section: a train.config.TrainConfig (sft:
  its TrainConfig fields, max_len = config.data.max_len; the pipeline passes `steps=`) or a
  DPOConfig (dpo: its fields 1:1), with the model's compute dtype and the seed."""
  if section is cfg.dpo:
    return DPOConfig.from_any({**section.to_dict(), "compute_dtype": cfg.model.dtype, "seed": cfg.seed, **overrides})
  names = {f.name for f in dataclasses.fields(TrainConfig)}
  fields = {k: v for k, v in section.items() if k in names}
  return TrainConfig.from_any({**fields, "max_len": cfg.data.max_len, "compute_dtype": cfg.model.dtype,
                               "seed": cfg.seed, **overrides})


def search_config(cfg, round_: int = 1):
  """The SearchConfig of `config.search` (its RUNNER_KEYS, e.g. n_conditions, are the pipeline's);
  round r > 1 of config.search_dpo_rounds searches with its own seed."""
  return config_from_section(cfg.search, seed=cfg.seed if round_ == 1 else sub_seed(cfg.seed, 4243, round_))


def reward_cfg(cfg, evaluation: bool = False) -> dict:
  """The reward settings (`rewards.RewardSettings`) of `config.reward`. readout "expected" (P4G)
  adds the training corpus's amounts (`readout.outcome_amounts`); `evaluation` then reads out
  "both" (the sampled, parsed outcome recorded beside the expected one)."""
  out = {"es_pattern": cfg.reward.es_pattern or rewards.DEFAULT_ES_PATTERN, "es_last_n": cfg.reward.es_last_n,
         "donation_cap": cfg.reward.donation_cap}
  if cfg.reward.readout == "expected" and cfg.task == "p4g":
    out.update(readout="both" if evaluation else "expected",
               outcome_amounts=readout.outcome_amounts(load_corpus(cfg)["train"], cfg.reward.donation_cap))
  return out
