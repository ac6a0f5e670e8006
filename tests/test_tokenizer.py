from __future__ import annotations

import pytest

from engage_jax.tokenizer import END, SPECIAL_TOKENS, ChatTokenizer, train_bpe

MSGS = [{"role": "system", "content": "You are a supporter."},
        {"role": "user", "content": "hi . i feel sad ."},
        {"role": "assistant", "content": "that must feel very heavy inside ."}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("bpe")
  texts = [m["content"] for m in MSGS] * 20 + ["you are strong and you will get through this ."] * 20
  train_bpe(texts, 400, d)
  return d


def test_train_and_load(tok_dir):
  tok = ChatTokenizer.load(tok_dir)
  vocab = tok.hf.get_vocab()
  assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
  assert tok.pad_id == 0 and tok.end_of_turn_id == vocab[END] and tok.eos_id == vocab["<|eos|>"]
  assert tok.vocab_size == len(vocab)
  text = "Unseen text, with ünïcode & 123!"
  assert tok.decode(tok.encode(text)) == text
  ids = tok.apply_chat(MSGS)
  assert ids[0] == tok.bos_id and ids[-1] == tok.end_of_turn_id
  assert ids.count(tok.end_of_turn_id) == 3
  gen = tok.apply_chat(MSGS[:2], add_generation_prompt=True)
  assert ids[:len(gen)] == gen
  assert tok.decode(ids[len(gen):]) == MSGS[2]["content"]


def test_save_round_trip(tok_dir, tmp_path):
  tok = ChatTokenizer.load(tok_dir)
  tok.save(tmp_path / "copy")
  tok2 = ChatTokenizer.load(tmp_path / "copy")
  assert tok2.apply_chat(MSGS, True) == tok.apply_chat(MSGS, True)


def test_parity_with_autotokenizer(tok_dir):
  from transformers import AutoTokenizer
  tok = ChatTokenizer.load(tok_dir)
  hf = AutoTokenizer.from_pretrained(str(tok_dir))
  for add in (False, True):
    text = hf.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=add)
    assert tok.render_chat(MSGS, add) == text
    out = hf.apply_chat_template(MSGS, tokenize=True, add_generation_prompt=add)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    assert list(ids) == tok.apply_chat(MSGS, add)
  assert hf.encode("i feel sad", add_special_tokens=False) == tok.encode("i feel sad")


def test_missing_tokenizer_json(tmp_path):
  with pytest.raises(ValueError, match="tokenizer.json") as e:
    ChatTokenizer.load(tmp_path)
  assert str(tmp_path) in str(e.value)


def test_vocab_too_small(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    train_bpe(["a b c"], 100, tmp_path)


def test_foreign_template_end_of_turn(tok_dir, tmp_path):
  """A Qwen-style dir: end_of_turn_id comes from <|im_end|> in the template."""
  from tokenizers import AddedToken
  tok = ChatTokenizer.load(tok_dir)
  hf = tok.hf
  hf.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>"),
                                                       AddedToken("<|im_end|>")]})
  hf.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content']"
                      " + '<|im_end|>\n' }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
  hf.save_pretrained(str(tmp_path))
  q = ChatTokenizer.load(tmp_path)
  assert q.end_of_turn_id == q.hf.convert_tokens_to_ids("<|im_end|>")
  from engage_jax.data.sft import examples_from_messages
  (ex,) = examples_from_messages(q, MSGS, 256)
  target = [i for i, m in zip(ex.input_ids, ex.loss_mask) if m]
  assert target[-1] == q.end_of_turn_id
  assert q.decode(target) == MSGS[2]["content"]
