"""Model configuration for the Llama family (Llama 2/3, Mistral, Qwen2) and HF config.json mapping."""
from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

# The one dtype map: a config names a dtype (model.dtype, model.param_dtype, train compute_dtype)
# and `jax_dtype` gives the JAX dtype of that name. The trainer's compute_dtype also takes the
# short aliases.
DTYPE_NAMES = ("float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


def jax_dtype(name: str, aliases: bool = False):
  """"float32" → jnp.float32, "bfloat16" → jnp.bfloat16 (with aliases: also "fp32", "bf16");
  KeyError on any other name."""
  import jax.numpy as jnp  # noqa: PLC0415 (lazy: this module stays free of jax imports)
  canonical = DTYPE_ALIASES.get(name, name) if aliases else name
  if canonical not in DTYPE_NAMES:
    raise KeyError(name)
  return getattr(jnp, canonical)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only Llama-family model (names follow transformers)."""
  model_type: str = "llama"
  vocab_size: int = 1024
  hidden_size: int = 128
  intermediate_size: int = 352
  num_hidden_layers: int = 2
  num_attention_heads: int = 4
  num_key_value_heads: int = 2
  head_dim: int | None = None
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: dict | None = None   # e.g. {"rope_type": "llama3", "factor": 8.0, ...}
  tie_word_embeddings: bool = False
  attention_bias: bool = False       # bias on q/k/v (Qwen2: always on)
  sliding_window: int | None = None  # Mistral / Qwen2 with use_sliding_window
  bos_token_id: int | None = None
  eos_token_id: int | list[int] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.rope_scaling is not None:
      rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
      if rope_type not in ("default", "llama3", "linear"):
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; supported: default, llama3, linear")

  @property
  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, v, n_layers = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
    hd, h, kv = self.head_dim, self.num_attention_heads, self.num_key_value_heads
    attn = d * hd * (h + 2 * kv) + h * hd * d + (hd * (h + 2 * kv) if self.attention_bias else 0)
    per_layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_word_embeddings else 2) + n_layers * per_layer + d

  # ---------------------------------------------------------------- HF config.json
  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Builds a config from a transformers `config.json` dict (old `rope_scaling` or new `rope_parameters`)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      archs = hf.get("architectures")
      raise ValueError(f"{source}: unsupported model_type {model_type!r} (architectures={archs}); "
                       f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
      if key not in hf:
        raise ValueError(f"{source}: missing field {key!r}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = float(hf.get("rope_theta", rope.pop("rope_theta", 10000.0)))
    rope.pop("rope_theta", None)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_scaling = None if rope_type == "default" else rope
    sliding = _qwen2_window(hf, source) if model_type == "qwen2" else hf.get("sliding_window")
    return cls(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=int(hf["num_attention_heads"]),
        num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        head_dim=hf.get("head_dim"),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
        sliding_window=sliding,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )

  def to_hf_dict(self) -> dict[str, Any]:
    """A transformers `config.json` dict for this config."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling:
      rope = dict(self.rope_scaling, rope_theta=self.rope_theta)
      rope.setdefault("rope_type", rope.pop("type", "default"))
    out = {
        "architectures": [arch[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "torch_dtype": "float32",
    }
    if self.model_type == "llama":
      out["attention_bias"] = self.attention_bias
      out["mlp_bias"] = False
    elif self.model_type == "mistral":
      out["sliding_window"] = self.sliding_window
    else:
      out["use_sliding_window"] = self.sliding_window is not None
      out["sliding_window"] = self.sliding_window
      if self.sliding_window is not None:
        out["max_window_layers"] = 0  # every layer slides
    return out


def _qwen2_window(hf: dict[str, Any], source: str) -> int | None:
  """Qwen2's window as transformers reads it: `sliding_window` only with use_sliding_window, on the
  layers that `layer_types` (or `max_window_layers`: layers from that index on) mark as sliding.
  None when no layer slides; per-layer windows (some layers full, some sliding) are refused."""
  if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
    return None
  n = int(hf["num_hidden_layers"])
  first = int(hf.get("max_window_layers", 28))
  types = set(hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(n)])
  if types == {"full_attention"}:
    return None
  if types != {"sliding_attention"}:
    raise ValueError(f"{source}: qwen2 with sliding windows on some layers only (use_sliding_window, "
                     f"max_window_layers={first}, {n} layers) is not supported")
  return int(hf["sliding_window"])
