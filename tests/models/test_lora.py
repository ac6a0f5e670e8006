"""LoRA on the NNX decoder: identity at zero-init B, adapter off, merge, PEFT export/import against
peft + transformers, and one-line errors for bad adapters/configs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from engage_jax import models
from engage_jax.errors import InputError
from engage_jax.models import lora
from tests.models import hf_reference
from tests.numerics import scaled_max_error

# Tolerances: merged vs adapter weights, and ours vs torch/peft, are other programs for the same
# function: they agree to a few fp32 ulps of the logits' scale on any x86-64 CPU (AVX2 or AVX-512).
# Upper bounds are `scaled_max_error` (tests/numerics.py: absolute for logits of order <= 1, as
# here, relative beyond); the "> 1e-2" lower bounds (the adapter changes the logits) are 1e5 times
# that rounding.

CFG = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
IDS = np.random.RandomState(0).randint(0, 64, (2, 9)).astype(np.int32)
MASK = np.ones_like(IDS)
MASK[1, :3] = 0  # left padding in one row


def _model(seed=0):
  return models.CausalLM(CFG, rngs=nnx.Rngs(seed))


def test_zero_init_b_is_exactly_the_base_model():
  m = _model()
  base = np.asarray(m(IDS, attention_mask=MASK))
  lora.apply_lora(m, lora.LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(1))
  # 7 projections, each stacked over the 2 layers with its adapter: A [L, in, r], B [L, r, out]
  assert len(lora.adapted(m)) == 7
  assert all(lin.lora.lora_a.shape == (2, lin.kernel.shape[1], 4) and lin.lora.lora_b.shape == (2, 4, lin.kernel.shape[2])
             for _, lin in lora.adapted(m))
  np.testing.assert_array_equal(np.asarray(m(IDS, attention_mask=MASK)), base)
  # the cached (sampling) path as well
  cache = m.init_cache(2, 9)
  pos = np.maximum(np.cumsum(MASK, -1) - 1, 0)
  h, _ = m.forward_cached(IDS, pos, cache, 0, MASK, mode="prefill")
  m2 = _model()
  h2, _ = m2.forward_cached(IDS, pos, m2.init_cache(2, 9), 0, MASK, mode="prefill")
  np.testing.assert_array_equal(np.asarray(h), np.asarray(h2))


def test_adapter_off_and_merge():
  m = _model()
  base = np.asarray(m(IDS, attention_mask=MASK))
  lora.apply_lora(m, lora.LoraConfig(rank=4, alpha=8.0, init="random", targets=("q", "v", "down")),
                  rngs=nnx.Rngs(1))
  on = np.asarray(m(IDS, attention_mask=MASK))
  assert np.abs(on - base).max() > 1e-2  # the adapter really changes the model
  with lora.disabled(m):
    np.testing.assert_array_equal(np.asarray(m(IDS, attention_mask=MASK)), base)
  np.testing.assert_array_equal(np.asarray(m(IDS, attention_mask=MASK)), on)  # back on
  merged = lora.merge(m)
  assert not lora.has_lora(merged)
  assert scaled_max_error(merged(IDS, attention_mask=MASK), on) < 1e-5


def test_only_adapters_are_trainable_state():
  m = lora.apply_lora(_model(), lora.LoraConfig(rank=2, targets=("q", "k")), rngs=nnx.Rngs(1))
  _, trainable, frozen, _ = lora.split_trainable(m)
  names = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)]
  # 2 targets x (A, B), each stacked over the 2 layers
  assert len(names) == 2 * 2 and all("/lora/lora_" in n for n in names)
  assert all(v.shape[0] == 2 for _, v in nnx.to_flat_state(trainable))
  assert not any("lora" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen))
  _, params, none, _ = lora.split_trainable(_model())
  assert none is None and len(nnx.to_flat_state(params)) == len(nnx.to_flat_state(frozen))


def _torch_logits(model, ids, mask):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
  return out.float().numpy()


@pytest.mark.parametrize("case", ["llama_gqa_llama3rope", "qwen2_tied"])
def test_peft_export_loads_in_peft_with_the_same_logits(tmp_path, case):
  import peft
  import transformers
  hf_reference.make_hf_model(case, tmp_path / "base")
  ids = IDS % 101
  m = models.from_pretrained(tmp_path / "base")
  lora.apply_lora(m, lora.LoraConfig(rank=4, alpha=16.0, init="random", targets=("q", "k", "o", "gate", "down")),
                  rngs=nnx.Rngs(3))
  ours = np.asarray(m(ids, attention_mask=MASK))
  lora.save_peft(m, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
  cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 16.0
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
  base_logits = _torch_logits(base, ids, MASK)
  pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  theirs = _torch_logits(pm, ids, MASK)
  real = MASK.astype(bool)
  assert np.abs(theirs - base_logits)[real].max() > 1e-2  # the adapter is really applied by peft
  assert scaled_max_error(theirs, ours, real) < 1e-4
  # the merged HF export gives the same logits in transformers too
  models.save_pretrained(lora.merge(m), tmp_path / "merged")
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
  assert scaled_max_error(_torch_logits(merged, ids, MASK), ours, real) < 1e-4


def test_peft_adapter_dir_loads_back(tmp_path):
  """An adapter trained elsewhere (peft, random B) loads onto our base with peft's logits."""
  import peft
  import torch
  import transformers
  hf_reference.make_hf_model("llama_tied", tmp_path / "base")
  ids = IDS % 101
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
  torch.manual_seed(0)
  pcfg = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0,
                         init_lora_weights=False, task_type="CAUSAL_LM")
  pm = peft.get_peft_model(base, pcfg).eval()
  pm.save_pretrained(str(tmp_path / "adapter"))
  want = _torch_logits(pm, ids, MASK)
  m = lora.load_peft(models.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
  assert m.lora_config.rank == 3 and set(m.lora_config.targets) == {"q_proj", "v_proj", "up_proj"}
  got = np.asarray(m(ids, attention_mask=MASK))
  assert scaled_max_error(got, want, MASK.astype(bool)) < 1e-4
  # and it round-trips through our writer
  lora.save_peft(m, tmp_path / "again")
  m2 = lora.load_peft(models.from_pretrained(tmp_path / "base"), tmp_path / "again")
  np.testing.assert_array_equal(np.asarray(m2(ids, attention_mask=MASK)), got)


def test_bad_lora_configs_name_the_field():
  with pytest.raises(InputError, match=r"qkv_proj match no projection.*\(|lora.targets") as e:
    lora.apply_lora(_model(), lora.LoraConfig.from_any({"rank": 2, "targets": "q,qkv"}))
  assert e.value.where == "lora.targets"
  with pytest.raises(InputError) as e:
    lora.apply_lora(_model(), lora.LoraConfig(rank=-1))
  assert e.value.where == "lora.rank"
  with pytest.raises(InputError) as e:
    lora.apply_lora(_model(), lora.LoraConfig(rank=2, dropout=0.1))
  assert e.value.where == "lora.dropout"
  m = _model()
  assert lora.apply_lora(m, lora.LoraConfig(rank=0)) is m and not lora.has_lora(m)  # rank 0 = off


def test_peft_adapter_for_another_base_is_refused(tmp_path):
  other = models.ModelConfig(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
  src = lora.apply_lora(models.CausalLM(other, rngs=nnx.Rngs(0)), lora.LoraConfig(rank=2), rngs=nnx.Rngs(1))
  lora.save_peft(src, tmp_path / "wide")
  with pytest.raises(InputError, match=r"has shape .* the base model needs") as e:
    lora.load_peft(_model(), tmp_path / "wide")
  assert "adapter_model.safetensors" in e.value.where
  deeper = models.ModelConfig(**{**CFG.__dict__, "num_hidden_layers": 3})
  src = lora.apply_lora(models.CausalLM(deeper, rngs=nnx.Rngs(0)), lora.LoraConfig(rank=2), rngs=nnx.Rngs(1))
  lora.save_peft(src, tmp_path / "deep")
  with pytest.raises(InputError, match="tensors not matching the base model"):
    lora.load_peft(_model(), tmp_path / "deep")
  (tmp_path / "gpt2").mkdir()
  (tmp_path / "gpt2" / "adapter_config.json").write_text(json.dumps(
      {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["c_attn"]}))
  with pytest.raises(InputError, match="c_attn match no parameter") as e:
    lora.load_peft(_model(), tmp_path / "gpt2")
  assert e.value.where.endswith("target_modules")
