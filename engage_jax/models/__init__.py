"""Flax NNX causal LMs of the Llama family and their HF checkpoint import/export.

    model = models.from_pretrained(hf_dir, dtype=jnp.float32)
    logits = model(input_ids, attention_mask=mask)      # [B, T, V]
    models.save_pretrained(model, out_dir)
"""
from engage_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from engage_jax.models.hf import from_pretrained, read_config, save_pretrained
from engage_jax.models.llama import CausalLM, KVCache

__all__ = ["CausalLM", "KVCache", "ModelConfig", "SUPPORTED_MODEL_TYPES", "from_pretrained", "read_config",
           "save_pretrained"]
