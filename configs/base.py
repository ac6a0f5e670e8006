"""Shared config schema: every config file starts from `base.get_config()` and overrides it.

Sections: data, tokenizer, model (agent + simulator), mesh, sft, dpo, search, eval, reward;
search and eval each hold `agent_sampling` / `simulator_sampling` (`sampling_config`).
Launchers take `--config=configs/<name>.py` and `--config.<section>.<key>=value` overrides; an
unknown key is an error (ml_collections ConfigDicts are locked).
"""
from __future__ import annotations

import ml_collections


def model_config(**overrides) -> ml_collections.ConfigDict:
  """A from-scratch model (ModelConfig fields) or, with `path`, a pretrained HF directory."""
  cfg = ml_collections.ConfigDict(dict(
      path="",               # HF model dir; when set, the fields below are read from its config.json
      model_type="llama",
      hidden_size=128,
      intermediate_size=352,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=512,
      tie_word_embeddings=True,
      rope_theta=10000.0,
      lora=lora_config(),    # rank 0 = full fine-tuning (the default)
  ))
  cfg.update(overrides)
  return cfg


def lora_config(**overrides) -> ml_collections.ConfigDict:
  """LoRA adapters of a role (engage_jax.models.lora): SFT and DPO then train the adapters only,
  the base weights stay frozen, and DPO's reference is the model with its adapters off."""
  cfg = ml_collections.ConfigDict(dict(
      rank=0,                # 0 = off; > 0: adapter rank r
      alpha=16.0,            # scale alpha / r (PEFT's lora_alpha)
      dropout=0.0,           # only 0.0 is implemented
      targets="q,k,v,o,gate,up,down",   # projections with adapters (comma-separated)
      init="default",        # default: B = 0 (model unchanged at start); random: B random too
      path="",               # a PEFT adapter dir (adapter_config.json) to start SFT from
  ))
  cfg.update(overrides)
  return cfg


def sampling_config(temperature: float, top_p: float = 1.0, max_new_tokens: int = 32,
                    top_k: int = 0) -> ml_collections.ConfigDict:
  """One role's sampling settings: the fields of engage_jax.sampling.SamplingParams (the stop ids
  are the tokenizer's end-of-turn / eos). Sections: search.agent_sampling,
  search.simulator_sampling, eval.agent_sampling, eval.simulator_sampling."""
  return ml_collections.ConfigDict(dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,      # 0 = greedy
      top_p=top_p,                  # 1.0 = off
      top_k=top_k,                  # 0 = off
  ))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.task = "es"                     # "es" | "p4g"
  c.seed = 0
  c.search_dpo_rounds = 1           # rounds of search -> DPO; round r > 1 searches with round r - 1's DPO agent
                                    # and trains DPO from it (rounds/round-r/); eval_dpo evaluates every round

  c.data = ml_collections.ConfigDict(dict(
      source="sandbox",             # "sandbox" | "esconv" | "p4g"
      path="",                      # real data dir (esconv/ or p4g/ files), e.g. ../shared/data/esconv
      sandbox_train=1500,           # sandbox dialogues for SFT
      sandbox_valid=150,
      sandbox_world="default",      # "default" | "delayed" (delayed-effect worlds, engage_jax/data/sandbox.py)
      max_len=256,                  # SFT example length (tokens), left-truncated
      skip_bad=False,               # skip malformed records (reported) instead of failing
      max_train_dialogues=0,        # 0 = all (real data: subsample for tiny CPU runs)
      max_valid_dialogues=0,        # 0 = all (the SFT held-out loss; subsample on CPU)
      condition_keys="",            # comma-separated condition keys kept (empty = all), e.g. P4G persona
  ))
  c.tokenizer = ml_collections.ConfigDict(dict(
      path="",                      # HF tokenizer dir; empty = train a byte-level BPE on the corpus
      vocab_size=1024,
  ))
  c.model = ml_collections.ConfigDict(dict(
      dtype="float32",              # compute dtype: float32 | bfloat16
      param_dtype="float32",
      remat=False,                  # recompute layer activations in the backward pass (big models)
      scan_layers=True,             # one lax.scan over the layers; False: unrolled (compile grows with depth)
      agent=model_config(),
      simulator=model_config(),
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.sft = ml_collections.ConfigDict(dict(
      agent_steps=150,
      simulator_steps=400,
      batch_size=32,
      learning_rate=3e-3,
      warmup_steps=30,
      weight_decay=0.01,
      grad_clip=1.0,
      grad_accum=1,
      min_bucket=32,                # shortest length bucket (each bucket is one compiled step)
      log_every=50,
      eval_every=200,
      checkpoint_every=200,
      keep_checkpoints=2,
  ))
  c.dpo = ml_collections.ConfigDict(dict(
      beta=0.1,
      loss_type="sigmoid",          # sigmoid | ipo | hinge | robust
      label_smoothing=0.0,
      rpo_alpha=1.0,                # > 0: add the chosen completions' NLL (RPO), against likelihood collapse
      heldout_fraction=0.0,         # > 0 (e.g. 0.1): hold out that share of the search trees' pairs, evaluated every
                                    # epoch (held-out accuracy / implicit margin: dpo_agent/heldout_curve.json, .png);
                                    # engage_jax/train/dpo_sweep.py picks epochs, lr and beta on them
      steps=0,                      # 0: `num_epochs` passes over the pairs
      num_epochs=5,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=10,
      weight_decay=0.0,
      grad_clip=1.0,
      grad_accum=1,
      max_len=256,
      min_bucket=32,
      log_every=20,
      checkpoint_every=100,
      keep_checkpoints=2,
  ))
  c.search = ml_collections.ConfigDict(dict(
      n_conditions=96,              # trees (one per training condition)
      trees_per_shard=16,
      trees_in_flight=0,            # trees searched at once, across shards (0 = trees_per_shard); a finished
                                    # tree is replaced at once, so generate calls hold trees_in_flight × k rows
      k=3,
      budget=8,                     # expansions per tree
      max_depth=3,
      max_turns=4,
      selection="uct",
      c=1.0,
      margin=0.2,
      prune_similarity=0.95,
      max_live=0,
      agent_sampling=sampling_config(temperature=0.9, top_p=0.9),
      # the simulator samples the user's reactions at T=1 so that their learned probabilities are
      # kept (T<1 sharpens them away)
      simulator_sampling=sampling_config(temperature=1.0),
      max_prompt_len=256,
      reward_horizon="future",      # "future": end-of-chat outcome (rollouts); "turn": the next user turn only
  ))
  c.eval = ml_collections.ConfigDict(dict(
      n_conditions=250,             # held-out conditions
      samples_per_condition=2,      # seeds per condition (same for SFT and DPO)
      batch_size=256,               # chats in flight (0: all at once); all n_conditions × samples chats run
                                    # in one simulate call, a finished chat's row refilled; bounds the memory
      max_agent_turns=4,
      heldout_simulator=False,      # True: also evaluate against a simulator the search never saw (SFT on the
                                    # odd half of the training dialogues, seed + 100; the search's simulator
                                    # then trains on the even half): report.json extra.heldout_simulator
      agent_sampling=sampling_config(temperature=0.7, top_p=0.9),
      simulator_sampling=sampling_config(temperature=1.0),
      max_prompt_len=256,
  ))
  c.rollout = ml_collections.ConfigDict(dict(
      kv_cache=True,                # search and eval Speakers keep each chat's KV cache between turns
                                    # (engage_jax/chat_cache.py); False: every turn prefills from token 0
  ))
  c.reward = ml_collections.ConfigDict(dict(
      es_pattern="",                # empty = engage_jax.rewards.DEFAULT_ES_PATTERN
      es_last_n=2,
      donation_cap=2.0,
      readout="sampled",            # P4G outcome: "sampled" (sample the answer, parse it) | "expected" (the
                                    # simulator's mean over the canonical answers of the corpus amounts,
                                    # engage_jax/readout.py; evaluation reports the sampled one beside it)
  ))
  return c
