"""Writes small GGUF files the way llama.cpp's converter does (Q/K rows permuted, GGUF tensor
names, `<arch>.*` and `tokenizer.ggml.*` metadata), for the GGUF import tests."""
from __future__ import annotations

import numpy as np

from engage_jax.models.gguf import permute_rotary

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
  """(tokens, token types, merges): the 256 byte symbols, a few merges, then ChatML specials."""
  from tokenizers import pre_tokenizers
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  merges = ["h e", "l l", "he ll", "Ġ t", "o u"]
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + alphabet + [m.replace(" ", "") for m in merges]
  types = [3, 3, 3] + [1] * (len(tokens) - 3)
  return tokens, types, merges


def _gguf_name(hf: str) -> str:
  top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
  if hf in top:
    return top[hf]
  layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  parts = hf.split(".")
  i, rest, suffix = parts[2], ".".join(parts[3:-1]), parts[-1]
  return f"blk.{i}.{layer[rest]}.{suffix}"


def write_gguf(path, config, tensors: dict[str, np.ndarray], *, qtype=None, arch: str = "llama",
               with_tokenizer: bool = True, raw: dict | None = None) -> None:
  """Writes `tensors` (transformers names, torch layout) as GGUF. qtype: a GGMLQuantizationType for
  2-D weights (1-D norms stay F32); raw: {gguf name: (uint8 bytes [rows, nbytes], qtype)} extra."""
  import gguf
  from gguf.quants import quantize
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(config.num_hidden_layers)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_attention_heads)
  w.add_head_count_kv(config.num_key_value_heads)
  w.add_rope_freq_base(config.rope_theta)
  w.add_layer_norm_rms_eps(config.rms_norm_eps)
  if with_tokenizer:
    tokens, types, merges = byte_level_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHATML)
  for name, arr in tensors.items():
    arr = np.asarray(arr, np.float32)
    if arch == "llama" and ("q_proj" in name or "k_proj" in name):
      arr = permute_rotary(arr, config.num_attention_heads if "q_proj" in name else config.num_key_value_heads)
    gname = _gguf_name(name)
    if qtype is None or arr.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
      w.add_tensor(gname, np.ascontiguousarray(arr))
    else:
      w.add_tensor(gname, quantize(arr, qtype), raw_dtype=qtype)
  for gname, (data, q) in (raw or {}).items():
    w.add_tensor(gname, data, raw_dtype=q)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
