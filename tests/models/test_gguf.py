"""GGUF import on small files written like llama.cpp's converter: dequantization against a numpy
reference of the block formats, the rotary un-permutation, config and tokenizer from metadata,
`convert_gguf`, and one-line errors for bad files."""
from __future__ import annotations

import json
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from engage_jax import models
from engage_jax.models import gguf as G
from engage_jax.tokenizer import ChatTokenizer
from tests.conftest import REPO
from tests.models.gguf_fixtures import write_gguf

# Tolerances: dequantization is exact numpy arithmetic on the stored bytes (the same on every CPU),
# so it is compared exactly, or against the format's own step (a fraction of the block's largest
# weight: relative) plus 1e-6 for the f16 scale's rounding. Logits of ours vs torch are two
# programs: `scaled_max_error` (tests/numerics.py), absolute for order <= 1, relative beyond.
from tests.numerics import scaled_max_error

CONFIG = models.ModelConfig(vocab_size=264, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)


def _hf_tensors(config=CONFIG, seed=0) -> dict[str, np.ndarray]:
  """Random weights under transformers' names (tied: no lm_head)."""
  import flax.nnx as nnx
  model = models.CausalLM(config, rngs=nnx.Rngs(seed))
  return models.hf.hf_state(model)


# ---------------------------------------------------------------- block formats, by hand
def _f16(b: np.ndarray) -> np.ndarray:
  return b.copy().view(np.float16).astype(np.float32)


def reference_dequantize(data: np.ndarray, qtype) -> np.ndarray:
  """ggml's block layouts written out from the format spec (32 weights a block)."""
  rows = data.reshape(-1, data.shape[-1])
  if qtype == Q.Q8_0:      # f16 d, 32 x int8 q: x = d * q
    blocks = rows.reshape(-1, 34)
    d, q = _f16(blocks[:, :2]), blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(rows.shape[0], -1)
  if qtype in (Q.Q4_0, Q.Q4_1):   # f16 d (, f16 m), 16 bytes: low nibbles = weights 0..15, high = 16..31
    size = 18 if qtype == Q.Q4_0 else 20
    blocks = rows.reshape(-1, size)
    d = _f16(blocks[:, :2])
    qs = blocks[:, size - 16:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    x = d * (q - 8) if qtype == Q.Q4_0 else d * q + _f16(blocks[:, 2:4])
    return x.reshape(rows.shape[0], -1)
  raise AssertionError(qtype)


def _write(writer: gguf.GGUFWriter) -> None:
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_dequantize_matches_the_block_format(qtype, tmp_path):
  """Each stored block decodes as the spec says, and the weights are within the format's error."""
  rng = np.random.RandomState(1)
  w = rng.randn(6, 64).astype(np.float32)
  data = gguf.quants.quantize(w, qtype)
  path = tmp_path / "w.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("blk.0.ffn_up.weight", data, raw_dtype=qtype)
  _write(writer)
  got = G.open_gguf(path).tensor("blk.0.ffn_up.weight")
  assert got.shape == (6, 64)
  np.testing.assert_array_equal(got, reference_dequantize(data, qtype))
  step = np.abs(w).reshape(-1, 32).max(-1, keepdims=True) / (127 if qtype == Q.Q8_0 else 7)
  assert np.all(np.abs(got - w).reshape(-1, 32) <= step + 1e-6)


# K-quants (256 weights a super-block): byte offsets of the f16 scales (d, and dmin where there is
# one) inside a block, from ggml's block_q*_K structs; every other byte is a free quant or scale.
K_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def _k_blocks(qtype, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
  """Random valid K-quant bytes [rows, blocks_per_row * block bytes]: random quants and sub-block
  scales, f16 super-block scales in [0.002, 0.05] (random bytes there could be inf or NaN)."""
  from gguf.constants import GGML_QUANT_SIZES
  size = GGML_QUANT_SIZES[qtype][1]
  rng = np.random.RandomState(seed)
  blocks = rng.randint(0, 256, (rows * blocks_per_row, size)).astype(np.uint8)
  for off in K_SCALE_OFFSETS[qtype]:
    blocks[:, off:off + 2] = rng.uniform(0.002, 0.05, (len(blocks), 1)).astype(np.float16).view(np.uint8)
  return blocks.reshape(rows, -1)


def reference_q6_k(raw: np.ndarray) -> np.ndarray:
  """Q6_K from ggml's dequantize_row_q6_K: per block ql[128], qh[64], int8 scales[16], f16 d; two
  halves of 128 weights, weight k + 32j of half h = d * scale[8h + k // 16 + 2j] * (6-bit q - 32)."""
  blocks = raw.reshape(-1, 210)
  ql, qh = blocks[:, :128].astype(np.int32), blocks[:, 128:192].astype(np.int32)
  sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
  d = _f16(blocks[:, 208:210])
  out = np.zeros((len(blocks), 256), np.float32)
  k = np.arange(32)
  for h in range(2):
    lo, hi = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32]
    q = [(lo[:, k] & 0xF) | ((hi >> 0 & 3) << 4), (lo[:, k + 32] & 0xF) | ((hi >> 2 & 3) << 4),
         (lo[:, k] >> 4) | ((hi >> 4 & 3) << 4), (lo[:, k + 32] >> 4) | ((hi >> 6 & 3) << 4)]
    for j in range(4):
      out[:, 128 * h + 32 * j + k] = d * sc[:, 8 * h + k // 16 + 2 * j] * (q[j] - 32)
  return out.reshape(raw.shape[0], -1)


@pytest.mark.parametrize("qtype", sorted(K_SCALE_OFFSETS))
def test_k_quant_tensors_match_the_gguf_reference(qtype, tmp_path):
  """A [3, 512] K-quant tensor (2 super-blocks a row) read through `open_gguf` equals the `gguf`
  package's own dequantize of the same bytes, in [out, in] layout, row by row (exact: the
  loader must only route the bytes); for Q6_K that reference itself equals ggml's block layout
  written out here (to one fp32 rounding: the product d * scale * q is rounded once or twice)."""
  raw = _k_blocks(qtype, 3, 2, seed=int(qtype))
  path = tmp_path / "k.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("blk.0.ffn_down.weight", raw, raw_dtype=qtype)
  _write(writer)
  got = G.open_gguf(path).tensor("blk.0.ffn_down.weight")
  want = gguf.quants.dequantize(raw, qtype).reshape(3, 512)
  assert got.shape == (3, 512) and np.isfinite(got).all() and np.abs(got).max() > 0
  np.testing.assert_array_equal(got, want)
  for r in range(3):  # each row decodes from its own bytes only
    np.testing.assert_array_equal(got[r], gguf.quants.dequantize(raw[r:r + 1], qtype).reshape(-1))
  if qtype == Q.Q6_K:
    ref = reference_q6_k(raw)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16])
def test_float_types_round_trip(qtype, tmp_path):
  rng = np.random.RandomState(2)
  w = rng.randn(3, 32).astype(np.float32)
  path = tmp_path / "w.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("output_norm.weight", gguf.quants.quantize(w, qtype), raw_dtype=qtype)
  _write(writer)
  got = G.open_gguf(path).tensor("output_norm.weight")
  tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 1e-2}[qtype]
  np.testing.assert_allclose(got, w, rtol=tol, atol=tol)


def test_unpermute_inverts_llama_cpp_permutation():
  rng = np.random.RandomState(3)
  w = rng.randn(4 * 16, 24).astype(np.float32)
  p = G.permute_rotary(w, 4)
  assert not np.array_equal(p, w)
  np.testing.assert_array_equal(G.unpermute_rotary(p, 4), w)
  # llama.cpp's layout: per head, row 2i is original row i and row 2i+1 is row i + hd/2.
  np.testing.assert_array_equal(p[0], w[0])
  np.testing.assert_array_equal(p[1], w[8])
  np.testing.assert_array_equal(p[16 + 3], w[16 + 8 + 1])


# ---------------------------------------------------------------- whole model
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
  """(gguf path, HF dir) of the same random weights."""
  root = tmp_path_factory.mktemp("gguf")
  tensors = _hf_tensors()
  path = root / "tiny.gguf"
  write_gguf(path, CONFIG, tensors)
  hf_dir = root / "hf"
  model = models.hf.build_model(CONFIG, tensors, "test")
  models.save_pretrained(model, hf_dir)
  return path, hf_dir


def test_config_from_metadata(tiny_gguf):
  cfg = G.open_gguf(tiny_gguf[0]).model_config()
  for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "rope_theta"):
    assert getattr(cfg, field) == getattr(CONFIG, field), field
  assert cfg.rms_norm_eps == pytest.approx(1e-5)
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)


def test_gguf_model_equals_the_hf_directory(tiny_gguf):
  """F32 GGUF with permuted Q/K → the same logits as the un-permuted HF directory, exactly."""
  path, hf_dir = tiny_gguf
  a, b = models.from_pretrained(path), models.from_pretrained(hf_dir)
  ids = jnp.asarray(np.random.RandomState(0).randint(3, 264, (2, 9)))
  np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))


def test_without_unpermute_the_logits_differ(tiny_gguf, monkeypatch):
  """The un-permutation matters: skipping it changes the model (so the test above can fail)."""
  path, hf_dir = tiny_gguf
  monkeypatch.setattr(G, "unpermute_rotary", lambda w, n: w)
  a, b = models.from_pretrained(path), models.from_pretrained(hf_dir)
  ids = jnp.asarray(np.random.RandomState(0).randint(3, 264, (2, 9)))
  assert np.abs(np.asarray(a(ids)) - np.asarray(b(ids))).max() > 1e-3


def test_quantized_model_within_quantization_error(tmp_path):
  tensors = _hf_tensors()
  path = tmp_path / "q8.gguf"
  write_gguf(path, CONFIG, tensors, qtype=Q.Q8_0)
  loaded = G.open_gguf(path).hf_tensors()
  assert set(loaded) == set(tensors)
  for name, w in tensors.items():
    scale = np.abs(w).max() / 127
    assert np.abs(loaded[name] - w).max() <= scale + 1e-6, name


def test_convert_gguf_writes_a_loadable_hf_dir(tiny_gguf, tmp_path):
  path, hf_dir = tiny_gguf
  out = models.convert_gguf(path, tmp_path / "conv")
  assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2
  ids = jnp.asarray([[5, 6, 7, 8]])
  np.testing.assert_array_equal(np.asarray(models.from_pretrained(out)(ids)),
                                np.asarray(models.from_pretrained(hf_dir)(ids)))
  tok = ChatTokenizer.load(out)
  direct = ChatTokenizer.load(path)
  msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello, you"}]
  assert tok.apply_chat(msgs, True) == direct.apply_chat(msgs, True)
  assert tok.end_of_turn_id == direct.end_of_turn_id == 2   # <|im_end|>, from the template
  assert tok.decode(tok.encode("hello there")) == "hello there"
  import transformers
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert hf_tok.encode("hello there", add_special_tokens=False) == tok.encode("hello there")
  ref = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  import torch
  with torch.no_grad():
    ref_logits = ref(torch.tensor(np.asarray(ids))).logits.numpy()
  assert scaled_max_error(models.from_pretrained(out)(ids), ref_logits) < 1e-4


# ---------------------------------------------------------------- bad files: one clear error
def test_truncated_file(tiny_gguf, tmp_path):
  bad = tmp_path / "cut.gguf"
  bad.write_bytes(tiny_gguf[0].read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file"):
    models.from_pretrained(bad)


def test_not_a_gguf(tmp_path):
  bad = tmp_path / "text.gguf"
  bad.write_text("hello")
  with pytest.raises(ValueError, match=r"text\.gguf: not a readable GGUF"):
    G.open_gguf(bad)


def test_unsupported_architecture(tmp_path):
  path = tmp_path / "gemma.gguf"
  write_gguf(path, CONFIG, _hf_tensors(), arch="gemma")
  with pytest.raises(ValueError, match=r"gemma\.gguf: unsupported GGUF architecture 'gemma'"):
    models.from_pretrained(path)


def test_quantization_type_not_implemented(tmp_path):
  path = tmp_path / "q8k.gguf"
  tensors = _hf_tensors()
  del tensors["model.layers.0.mlp.up_proj.weight"]
  raw = {"blk.0.ffn_up.weight": (np.zeros((96, 292), np.uint8), Q.Q8_K)}  # Q8_K: 256 weights in 292 bytes
  write_gguf(path, CONFIG, tensors, raw=raw)
  with pytest.raises(ValueError, match=r"q8k\.gguf: tensor 'blk\.0\.ffn_up\.weight' has quantization type Q8_K"):
    models.from_pretrained(path)


def test_no_tokenizer_metadata(tmp_path):
  path = tmp_path / "notok.gguf"
  write_gguf(path, CONFIG, _hf_tensors(), with_tokenizer=False)
  models.from_pretrained(path)  # the weights alone are fine
  with pytest.raises(ValueError, match=r"notok\.gguf: no tokenizer metadata"):
    ChatTokenizer.load(path)


@pytest.mark.parametrize("case", ["truncated", "no_tokenizer"])
def test_launcher_error_is_one_line(case, tiny_gguf, tmp_path):
  """Through the pipeline launcher: exit 2, one `error:` line naming the file, no traceback."""
  if case == "truncated":
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(tiny_gguf[0].read_bytes()[:5000])
  else:
    bad = tmp_path / "notok.gguf"
    write_gguf(bad, CONFIG, _hf_tensors(), with_tokenizer=False)
  proc = subprocess.run(
      [sys.executable, "launch/pipeline.py", "--config=configs/sandbox_es.py", f"--workdir={tmp_path / 'wd'}",
       f"--config.tokenizer.path={bad}", "--compilation_cache=off"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and bad.name in lines[0], proc.stderr[-2000:]
