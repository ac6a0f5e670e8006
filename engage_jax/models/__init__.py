"""Flax NNX causal LMs of the Llama family and their HF checkpoint import/export.

    model = models.from_pretrained(hf_dir, dtype=jnp.float32)
    logits = model(input_ids, attention_mask=mask)      # [B, T, V]
    models.save_pretrained(model, out_dir)
    model = models.from_pretrained("model.gguf")          # GGUF: dequantized, Q/K un-permuted
    models.convert_gguf("model.gguf", hf_dir)               # GGUF → HF dir (weights + tokenizer)
"""
from engage_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from engage_jax.models.gguf import convert_gguf
from engage_jax.models.hf import from_pretrained, read_config, save_pretrained
from engage_jax.models.llama import CausalLM, KVCache

__all__ = ["CausalLM", "KVCache", "ModelConfig", "convert_gguf", "SUPPORTED_MODEL_TYPES", "from_pretrained", "read_config",
           "save_pretrained"]
