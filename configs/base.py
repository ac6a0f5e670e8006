"""The launchers' config with every default, generated from the schema (engage_jax/schema.py):
each key's type, default, one-line doc and range check are defined there, once. A config file
starts from `base.get_config()` and states only what differs.

Sections: data, tokenizer, model (agent + simulator, each with lora), mesh, sft, dpo, search,
eval (both with agent_sampling / simulator_sampling), rollout, reward. Launchers take
`--config=configs/<name>.py` and `--config.<section>.<key>=value` overrides; an unknown key is an
error (ml_collections ConfigDicts are locked). `python -m engage_jax.schema` lists every key.
"""
from __future__ import annotations

import ml_collections

from engage_jax import schema
from engage_jax.models.lora import LoraConfig


def model_config(**overrides) -> ml_collections.ConfigDict:
  """config.model.<role>: a from-scratch model or, with `path`, a pretrained one."""
  cfg = schema.config_dict(schema.RoleModelConfig())
  cfg.update(overrides)
  return cfg


def lora_config(**overrides) -> ml_collections.ConfigDict:
  """config.model.<role>.lora (rank 0: full fine-tuning)."""
  cfg = schema.config_dict(LoraConfig())
  cfg.update(overrides)
  return cfg


def get_config() -> ml_collections.ConfigDict:
  return schema.defaults()
