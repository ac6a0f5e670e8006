"""Chat tokenizer: one wrapper over any HF tokenizer dir (trained BPE or a pretrained model's).

`train_bpe` trains a byte-level BPE with the `tokenizers` library and saves it as an ordinary HF
tokenizer dir (tokenizer.json + tokenizer_config.json + chat template), so from-scratch models go
through the same `ChatTokenizer.load` path as Llama / Qwen / Mistral tokenizers.

Our template renders a conversation as

    <|bos|><|system|>{system}<|end|><|user|>{user}<|end|><|assistant|>{reply}<|end|>

and a generation prompt as a trailing `<|assistant|>`. `<|end|>` closes every message and is the
generation stop token (`end_of_turn_id`). For other tokenizer dirs, `end_of_turn_id` is the first
of `<|end|>`, `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>` that the chat template uses,
else the eos token. No torch anywhere: transformers is used for tokenizers and templates only.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engage_jax import multihost
from engage_jax.models import gguf

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END)  # ids 0..6 in a trained BPE

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")

_END_OF_TURN_CANDIDATES = (END, "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def _load_hf(path: Path):
  """The dir's tokenizer.json (+ tokenizer_config.json: special tokens, chat template) as a fast
  tokenizer. Not `AutoTokenizer`: its import chain loads torch when torch is installed, and a
  second native runtime in the JAX process is only a liability."""
  from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (optional dependency: transformers)
  return PreTrainedTokenizerFast.from_pretrained(str(path))


class ChatTokenizer:
  """Thin wrapper over a `transformers` fast tokenizer with a chat template.

  Attributes: `vocab_size`, `pad_id`, `eos_id`, `bos_id` (None if the tokenizer has none),
  `end_of_turn_id` (closes a chat message; the generation stop token), `hf` (the HF tokenizer).
  """

  def __init__(self, hf_tokenizer, source: str = "tokenizer"):
    self.hf = hf_tokenizer
    if not getattr(hf_tokenizer, "chat_template", None):
      raise ValueError(f"{source}: the tokenizer has no chat template")
    vocab = hf_tokenizer.get_vocab()
    self.eos_id = hf_tokenizer.eos_token_id
    self.bos_id = hf_tokenizer.bos_token_id
    template = hf_tokenizer.chat_template
    eot = None
    for tok in _END_OF_TURN_CANDIDATES:
      if tok in vocab and tok in template:
        eot = vocab[tok]
        break
    if eot is None:
      eot = self.eos_id
    if eot is None:
      raise ValueError("ChatTokenizer: cannot find an end-of-turn token (no eos, no known "
                       "end-of-turn token in the chat template)")
    self.end_of_turn_id = int(eot)
    if self.eos_id is None:
      self.eos_id = self.end_of_turn_id
    pad = hf_tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else self.eos_id)
    self.vocab_size = len(hf_tokenizer)

  # ---- io ----
  @classmethod
  def load(cls, path: str | os.PathLike) -> ChatTokenizer:
    """Loads an HF tokenizer dir, or the tokenizer in a `.gguf` file's metadata; ValueError if the
    dir has no tokenizer.json."""
    if gguf.is_gguf(path):
      return cls(gguf.open_gguf(path).hf_tokenizer(), str(path))
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
      raise ValueError(f"tokenizer dir {str(path)!r} has no tokenizer.json")
    return cls(_load_hf(path), str(path))

  def save(self, path: str | os.PathLike) -> None:
    """Writes an HF tokenizer dir (loadable by `transformers.AutoTokenizer`); process 0 only."""
    multihost.main_write(_save_hf, self.hf, path, what=str(path))

  # ---- text ----
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return list(self.hf.encode(text, add_special_tokens=False))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` over many texts in one call (faster)."""
    if not texts:
      return []
    backend = getattr(self.hf, "backend_tokenizer", None)
    if backend is None:
      return [list(x) for x in self.hf(list(texts), add_special_tokens=False)["input_ids"]]
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, special tokens skipped."""
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=True,
                          clean_up_tokenization_spaces=False)

  def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (list of {"role", "content"})."""
    template = self._compiled_template()
    if template is not None:
      return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                             **self._template_kwargs)
    return self.hf.apply_chat_template(list(messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

  def _compiled_template(self):
    """The jinja template compiled the way transformers does (cached); None → use
    `apply_chat_template` (the reference; tests check both give the same text)."""
    if not hasattr(self, "_template"):
      self._template = None
      try:
        from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: PLC0415 (optional dependency: transformers)
        self._template = _compile_jinja_template(self.hf.chat_template)
        self._template_kwargs = dict(self.hf.special_tokens_map)
      except Exception:  # private helper moved: fall back to the public API
        self._template = None
    return self._template

  def apply_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the rendered chat (the template supplies bos / role / end tokens)."""
    return self.encode(self.render_chat(messages, add_generation_prompt))

  def extend_chat(self, prefix: Sequence[dict], prefix_ids: Sequence[int], messages: Sequence[dict],
                  add_generation_prompt: bool = False) -> list[int]:
    """`apply_chat(messages, add_generation_prompt)`, given `prefix_ids == apply_chat(prefix)` for
    a prefix of `messages`: encodes only the text after the prefix's render. That is exact when
    the prefix's text is a prefix of the full text and the rest starts with a special token that
    does not strip the text before it (the tokenizer splits its input at special tokens before
    anything else), which is checked; otherwise the whole chat is encoded."""
    full = self.render_chat(messages, add_generation_prompt)
    head = self.render_chat(prefix, False) if prefix else ""
    rest = full[len(head):]
    if (prefix and list(messages[:len(prefix)]) == list(prefix) and full.startswith(head)
        and self._splits_before(rest)):
      return list(prefix_ids) + self.encode(rest)
    return self.encode(full)

  def _splits_before(self, text: str) -> bool:
    """Whether `text` starts with a special token that keeps the text before it (no lstrip)."""
    if not hasattr(self, "_split_tokens"):
      added = getattr(self.hf, "added_tokens_decoder", {}) or {}
      self._split_tokens = tuple(t.content for t in added.values()
                                 if getattr(t, "special", False) and not getattr(t, "lstrip", False))
    return any(text.startswith(t) for t in self._split_tokens)

  def __repr__(self) -> str:
    return (f"ChatTokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"eos_id={self.eos_id}, end_of_turn_id={self.end_of_turn_id})")


class ChatRenderer:
  """Chat ids with a generation prompt, rendered incrementally: `ids(messages)` ==
  `tokenizer.apply_chat(messages, add_generation_prompt=True)`, encoding only the messages after
  the longest prefix rendered before (`ChatTokenizer.extend_chat`). Remembers the ids of the last
  `capacity` message lists (without the generation prompt)."""

  def __init__(self, tokenizer: ChatTokenizer, capacity: int = 4096):
    self.tokenizer = tokenizer
    self.capacity = capacity
    self._memo: dict[tuple, list[int]] = {}

  def ids(self, messages: Sequence[dict]) -> list[int]:
    messages = list(messages)
    keys = tuple(tuple(sorted(m.items())) for m in messages)
    n = next((n for n in range(len(keys), 0, -1) if keys[:n] in self._memo), 0)
    base = self._memo.get(keys[:n], [])
    plain = base if n == len(keys) else self.tokenizer.extend_chat(messages[:n], base, messages)
    if n < len(keys):
      if len(self._memo) >= self.capacity:
        self._memo.pop(next(iter(self._memo)))
      self._memo[keys] = plain
    return self.tokenizer.extend_chat(messages, plain, messages, add_generation_prompt=True)


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
              min_frequency: int = 2) -> ChatTokenizer:
  """Trains a byte-level BPE on `texts`, writes an HF tokenizer dir to `out_dir`, loads it back.

  Special tokens get ids 0..6 in the order of `SPECIAL_TOKENS` (pad first). The byte alphabet
  (256 symbols) is always included, so any text is encodable; `vocab_size` must exceed 263.
  """
  from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (optional dependency: transformers)
  n_min = 256 + len(SPECIAL_TOKENS)
  if vocab_size <= n_min:
    raise ValueError(f"train_bpe: vocab_size must be > {n_min} (bytes + specials), got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator((t for t in texts), trainer=trainer)
  hf = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
      additional_special_tokens=[SYSTEM, USER, ASSISTANT, END], clean_up_tokenization_spaces=False)
  hf.chat_template = CHAT_TEMPLATE
  out = Path(out_dir)
  multihost.main_write(_save_hf, hf, out, what=str(out))  # then every process loads process 0's files
  return ChatTokenizer.load(out)


def _save_hf(hf, path) -> None:
  Path(path).mkdir(parents=True, exist_ok=True)
  hf.save_pretrained(str(path))
