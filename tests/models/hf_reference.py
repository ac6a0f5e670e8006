"""Tiny random transformers models (torch) saved as HF dirs: the parity reference."""
from __future__ import annotations

import torch
import transformers

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CASES = {
    "llama_gqa_llama3rope": (transformers.LlamaConfig, dict(rope_scaling=LLAMA3_ROPE, tie_word_embeddings=False)),
    "llama_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "mistral": (transformers.MistralConfig, dict(tie_word_embeddings=False, sliding_window=4096)),
    "qwen2_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen2_untied": (transformers.Qwen2Config, dict(tie_word_embeddings=False, num_key_value_heads=1)),
}
# Sliding windows shorter than the test sequences (test_hf_parity's windowed test): Mistral's one
# window on every layer, Qwen2's with max_window_layers=0 (every layer slides).
WINDOW = 5
WINDOW_CASES = {
    "mistral_window": (transformers.MistralConfig, dict(tie_word_embeddings=False, sliding_window=WINDOW)),
    "qwen2_window": (transformers.Qwen2Config, dict(tie_word_embeddings=True, use_sliding_window=True,
                                                    sliding_window=WINDOW, max_window_layers=0)),
}


def make_hf_model(case: str, out_dir, seed: int = 0):
  """Builds the random torch model for `case`, saves it to `out_dir`, returns it (eval mode, fp32)."""
  cls, extra = {**CASES, **WINDOW_CASES}[case]
  config = cls(**{**TINY, **extra})
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # non-trivial norms and biases so that they are really tested
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.normal_(0, 0.05)
  model.save_pretrained(out_dir)
  return model
