"""SFT examples: token ids + loss masks for the agent and the user simulator, bucketed batches.

Examples are windows over a conversation, every target message in a window supervised:
- agent: `agent_messages(task, turns)`; the targets are the agent turns ("assistant" messages).
- simulator: `simulator_messages(task, condition, turns, mark_end=True)` (turns after the user's
  last turn are dropped, so the simulator always ends a chat with END_MARKER on its own turn);
  the targets are the user turns. For P4G dialogues with an outcome["donation"], the chat goes on
  with "user": OUTCOME_REQUEST → "assistant": `outcome_line(donation)`, and that line is a target
  too.

Loss-mask convention: `loss_mask[t] = 1` means token `input_ids[t]` is a target, i.e. the loss
at position t uses `logits[t - 1]` (see `next_token_arrays`). Masked-in tokens are exactly the
target messages' content tokens and their end-of-turn token (never a role header, never the
template's text after the end-of-turn token, never pad).

Windows (`examples_from_messages`): a window is the system message's tokens followed by the
tokens of consecutive messages `s..e` of the chat, cut after the end-of-turn token of its last
message `e`, which is a target; it supervises the targets of `s..e` that no earlier window did.
Windows are made left to right: a window starts at the first target not yet supervised with at
least `min_history` tokens of history before it (whole messages; default 1: at least the message
it answers), takes in as many following targets as fit `max_len` (with the messages between
them), then prepends as much more history (older messages, already supervised or not targets) as
still fits. So every target token is supervised exactly once; a chat that fits `max_len` is one
example whose targets each see their full history; a longer chat becomes overlapping windows.
By causal attention, each target's loss in a window equals its loss in a one-target example with
the same history, so the objective (mean over target tokens) is the per-turn one at a fraction of
the positions; what a target gives up is history: a per-turn example filled `max_len` before
each target, a window only before its first one (measured on ESConv with SmolLM2 at max_len
256: mean context 136 tokens instead of 168 for agent turns, for 3x fewer rows).
A target message that alone does not fit (system message + its header + its tokens > max_len)
is handled as before windows: its own example without history, the target's tail cut
(stats "target_cut"); if the system message + header alone do not fit, it is dropped ("dropped").

Token sequences are built by concatenating per-message token segments taken from incremental
renders of the chat template; this needs a template whose rendering of a message does not depend
on the other messages (ours, Llama 3, Qwen 2, Mistral, ChatML all qualify) and is checked
(ValueError otherwise).

Padding: right-padded with `pad_id` into fixed length buckets (powers of two from `min_bucket`
up to `max_len`, plus `max_len`), so a jit step compiles once per bucket.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

import datasets
import numpy as np

from engage_jax import buckets as buckets_lib
from engage_jax.data import hf_datasets
from engage_jax.data.chat import END_MARKER, OUTCOME_REQUEST, agent_messages, outcome_line, simulator_messages
from engage_jax.data.dialogue import USER, Dialogue

ARRAY_KEYS = ("input_ids", "loss_mask", "attention_mask")


@dataclasses.dataclass
class Example:
  """One SFT example (a window of one chat). input_ids / loss_mask: equal-length lists;
  kind: agent|simulator."""
  input_ids: list[int]
  loss_mask: list[int]
  dialogue_id: str = ""
  kind: str = "agent"


def _is_prefix(a: Sequence[int], b: Sequence[int]) -> bool:
  return len(a) <= len(b) and list(b[:len(a)]) == list(a)


def _message_tokens(tok, messages, targets, dialogue_id):
  """(head, segs, headers, bodies): head = tokens of the system message's render (incl. bos);
  segs[k] = tokens message k adds (k >= 1); for target j, headers[j] + bodies[j] = the tokens of
  message j rendered after a generation prompt (headers[j] = the generation prompt's tokens).

  Fast path: split the rendered *strings* at message boundaries and encode the pieces once
  (O(total length)); checked against an encode of the whole chat. Fallback: encode every prefix
  render (O(length^2)); raises ValueError if the template is not prefix-additive.
  """
  last = max(targets)
  strs = [tok.render_chat(messages[:k + 1]) for k in range(last + 1)]  # strs[k]: messages 0..k
  gens = {j: tok.render_chat(messages[:j], add_generation_prompt=True) for j in targets}
  ok = all(strs[k].startswith(strs[k - 1]) for k in range(1, last + 1)) and all(
      gens[j].startswith(strs[j - 1]) and strs[j].startswith(gens[j]) for j in targets)
  if ok:
    pieces = [strs[0]] + [strs[k][len(strs[k - 1]):] for k in range(1, last + 1)]
    pieces += [gens[j][len(strs[j - 1]):] for j in targets]
    pieces += [strs[j][len(gens[j]):] for j in targets]
    enc = tok.encode_batch(pieces + [strs[last]])
    head, segs = enc[0], [None] + enc[1:last + 1]
    hs = enc[last + 1:last + 1 + len(targets)]
    bs = enc[last + 1 + len(targets):last + 1 + 2 * len(targets)]
    headers, bodies = dict(zip(targets, hs)), dict(zip(targets, bs))
    ok = (list(head) + [t for k in range(1, last + 1) for t in segs[k]] == list(enc[-1]) and
          all(list(headers[j]) + list(bodies[j]) == list(segs[j]) for j in targets))
    if ok:
      return head, segs, headers, bodies
  enc = tok.encode_batch(strs + [gens[j] for j in targets])
  full, gen_ids = enc[:last + 1], dict(zip(targets, enc[last + 1:]))
  for k in range(1, last + 1):
    if not _is_prefix(full[k - 1], full[k]):
      raise ValueError(f"dialogue {dialogue_id!r}: chat template is not prefix-additive at "
                       f"message {k}; cannot build SFT examples by segments")
  segs = [None] + [full[k][len(full[k - 1]):] for k in range(1, last + 1)]
  headers, bodies = {}, {}
  for j in targets:
    g = gen_ids[j]
    if not (_is_prefix(full[j - 1], g) and _is_prefix(g, full[j])):
      raise ValueError(f"dialogue {dialogue_id!r}: generation prompt is not a prefix of the "
                       f"rendered message {j}")
    headers[j], bodies[j] = g[len(full[j - 1]):], full[j][len(g):]
  return full[0], segs, headers, bodies


def examples_from_messages(tok, messages: Sequence[dict], max_len: int, *, dialogue_id: str = "",
                           kind: str = "agent", targets: Sequence[int] | None = None,
                           stats: dict | None = None, min_history: int = 1) -> list[Example]:
  """Windows over one chat (see the module docstring), every target supervised exactly once;
  targets default to every "assistant" message. One target gives one example: that target with
  as much history as fits (history dropped oldest-message-first, the system message kept).
  min_history: tokens of history (whole messages) a window's first target keeps when they fit.

  messages[0] must be the system message. stats (optional dict) gets counters "windows",
  "truncated" (windows that do not start at the chat's first message), "target_cut" (target
  tail cut) and "dropped" (system message + header alone > max_len).
  """
  if not messages or messages[0]["role"] != "system":
    raise ValueError(f"dialogue {dialogue_id!r}: messages must start with a system message")
  n = len(messages)
  targets = sorted(set(targets if targets is not None else
                       [j for j in range(1, n) if messages[j]["role"] == "assistant"]))
  if not targets:
    return []
  if targets[0] < 1 or targets[-1] >= n:
    raise ValueError(f"dialogue {dialogue_id!r}: target message indices must be in 1..{n - 1}")
  head, segs, headers, bodies = _message_tokens(tok, messages, targets, dialogue_id)
  eot = tok.end_of_turn_id
  # the tokens of target j: its body up to and including the end-of-turn token
  tlen = {j: (list(bodies[j]).index(eot) + 1 if eot in bodies[j] else len(bodies[j])) for j in targets}
  end_len = {j: len(headers[j]) + tlen[j] for j in targets}  # message j as a window's last message

  def count(key):
    if stats is not None:
      stats[key] = stats.get(key, 0) + 1

  out, i = [], 0
  while i < len(targets):
    first = targets[i]
    if len(head) + len(headers[first]) >= max_len:
      count("dropped")
      i += 1
      continue
    if len(head) + end_len[first] > max_len:  # alone too long: no history, tail cut
      count("target_cut")
      if first > 1:
        count("truncated")
      ids = list(head) + list(headers[first]) + list(bodies[first][:tlen[first]])
      ids = ids[:max_len]
      mask = [0] * (len(head) + len(headers[first])) + [1] * (max_len - len(head) - len(headers[first]))
      out.append(Example(ids, mask[:len(ids)], dialogue_id, kind))
      count("windows")
      i += 1
      continue
    # first the history the first target must see (min_history tokens, whole messages)
    start, used = first, len(head) + end_len[first]
    while (start > 1 and used - len(head) - end_len[first] < min_history
           and used + len(segs[start - 1]) <= max_len):
      start -= 1
      used += len(segs[start])
    # take in the following targets while they fit (the messages between them come along)
    last, k = i, i + 1
    while k < len(targets):
      j = targets[k]
      grow = sum(len(segs[m]) for m in range(targets[k - 1], j)) - end_len[targets[k - 1]] + end_len[j]
      if used + grow > max_len:
        break
      used, last, k = used + grow, k, k + 1
    # then as much history as still fits
    while start > 1 and used + len(segs[start - 1]) <= max_len:
      start -= 1
      used += len(segs[start])
    if start > 1:
      count("truncated")
    supervised = set(targets[i:last + 1])
    end = targets[last]
    ids, mask = list(head), [0] * len(head)
    for m in range(start, end + 1):
      seg = list(segs[m]) if m < end else list(headers[m]) + list(bodies[m][:tlen[m]])
      ids += seg
      if m in supervised:
        mask += [0] * len(headers[m]) + [1] * tlen[m] + [0] * (len(seg) - len(headers[m]) - tlen[m])
      else:
        mask += [0] * len(seg)
    assert len(ids) == used <= max_len
    out.append(Example(ids, mask, dialogue_id, kind))
    count("windows")
    i = last + 1
  return out


def agent_examples(dialogues: Sequence[Dialogue], tok, max_len: int,
                   stats: dict | None = None) -> list[Example]:
  """Windows of every dialogue's agent view; targets: its agent turns."""
  out = []
  for d in dialogues:
    out.extend(examples_from_messages(tok, agent_messages(d.task, d.turns), max_len,
                                      dialogue_id=d.id, kind="agent", stats=stats))
  return out


def simulator_messages_with_outcome(d: Dialogue, *, with_outcome: bool = True,
                                    condition_keys: Sequence[str] | None = None) -> list[dict] | None:
  """The simulator's view of `d` up to the user's last turn (END_MARKER on it), plus, for a P4G
  dialogue with outcome["donation"] (and `with_outcome`), OUTCOME_REQUEST → `outcome_line`.
  None when the dialogue has no user turn."""
  last_user = max((i for i, t in enumerate(d.turns) if t.role == USER), default=-1)
  if last_user < 0:
    return None
  msgs = simulator_messages(d.task, d.condition, d.turns[:last_user + 1], mark_end=True,
                            condition_keys=condition_keys)
  if with_outcome and d.task == "p4g" and "donation" in d.outcome:
    msgs = msgs + [{"role": "user", "content": OUTCOME_REQUEST},
                   {"role": "assistant", "content": outcome_line(d.outcome["donation"])}]
  return msgs


def simulator_examples(dialogues: Sequence[Dialogue], tok, max_len: int, *,
                       with_outcome: bool = True, condition_keys: Sequence[str] | None = None,
                       stats: dict | None = None) -> list[Example]:
  """Windows of every dialogue's simulator view (`simulator_messages_with_outcome`); targets:
  its user turns (the last with END_MARKER) and, for P4G, the outcome line."""
  out = []
  for d in dialogues:
    msgs = simulator_messages_with_outcome(d, with_outcome=with_outcome, condition_keys=condition_keys)
    if msgs is not None:
      out.extend(examples_from_messages(tok, msgs, max_len, dialogue_id=d.id, kind="simulator",
                                        stats=stats))
  return out


def tokenizer_texts(dialogues: Sequence[Dialogue]) -> Iterator[str]:
  """Every text a tokenizer for these dialogues must cover well: both views' system prompts
  (with conditions), turn texts, END_MARKER, OUTCOME_REQUEST and outcome lines."""
  yield END_MARKER
  yield OUTCOME_REQUEST
  for d in dialogues:
    yield agent_messages(d.task, [])[0]["content"]
    yield simulator_messages(d.task, d.condition, [])[0]["content"]
    for t in d.turns:
      yield t.text
    if d.task == "p4g" and "donation" in d.outcome:
      yield outcome_line(d.outcome["donation"])


def default_buckets(max_len: int, min_bucket: int = 32) -> tuple[int, ...]:
  """min_bucket doubled while below max_len, then max_len, e.g. (32, 64, 128, 200): `buckets.ladder`."""
  return buckets_lib.ladder(max_len, min_bucket)


def pad_to_buckets(examples: Sequence[Example], pad_id: int, max_len: int,
                   buckets: Sequence[int] | None = None) -> dict[int, dict[str, np.ndarray]]:
  """{bucket length T: {"input_ids", "loss_mask", "attention_mask": int32 [N_T, T]}}, right-padded
  with pad_id (mask 0). Each example goes to the smallest bucket that holds it."""
  buckets = sorted(buckets or default_buckets(max_len))
  rows: dict[int, list[Example]] = {}
  for ex in examples:
    n = len(ex.input_ids)
    if n > buckets[-1]:
      raise ValueError(f"example of dialogue {ex.dialogue_id!r} has {n} tokens > largest "
                       f"bucket {buckets[-1]}")
    rows.setdefault(buckets_lib.fit(n, buckets), []).append(ex)
  out = {}
  for b in sorted(rows):
    exs = rows[b]
    ids = np.full((len(exs), b), pad_id, np.int32)
    mask = np.zeros((len(exs), b), np.int32)
    att = np.zeros((len(exs), b), np.int32)
    for i, ex in enumerate(exs):
      n = len(ex.input_ids)
      ids[i, :n] = ex.input_ids
      mask[i, :n] = ex.loss_mask
      att[i, :n] = 1
    out[b] = {"input_ids": ids, "loss_mask": mask, "attention_mask": att}
  return out


WINDOWS_VERSION = "windows-1"  # bump when the examples of a dialogue change: cached ones are not reused


def tokenizer_fingerprint(tok) -> str:
  """SHA-256 of what tokenization depends on: the tokenizer's vocabulary/merges/normaliser (its
  tokenizer.json), special tokens and chat template."""
  hf = tok.hf
  h = hashlib.sha256(hf.backend_tokenizer.to_str().encode())
  h.update(json.dumps([hf.chat_template, sorted(hf.special_tokens_map.items(), key=str),
                       tok.end_of_turn_id, tok.pad_id], default=str).encode())
  return h.hexdigest()


def _examples_batch(batch: dict, tok, role: str, max_len: int, kw: dict) -> dict:
  """`.map` function: each dialogue (JSON) → its windows' token ids, loss masks and stats (JSON)."""
  out: dict[str, list] = {"input_ids": [], "loss_mask": [], "stats": []}
  for text in batch["dialogue"]:
    d, st = Dialogue.from_json(json.loads(text)), {}
    fn = agent_examples if role == "agent" else simulator_examples
    exs = fn([d], tok, max_len, stats=st, **kw)
    out["input_ids"].append([e.input_ids for e in exs])
    out["loss_mask"].append([e.loss_mask for e in exs])
    out["stats"].append(json.dumps(st))
  return out


def examples_dataset(dialogues: Sequence[Dialogue], tok, role: str, max_len: int, *,
                     cache_dir: str | None = None, **kw) -> datasets.Dataset:
  """One row per dialogue ("id", and its windows' "input_ids" / "loss_mask" [windows][tokens], "stats"
  JSON), made by `datasets.Dataset.map` over the dialogues and cached on disk at
  `<cache>/sft-<fingerprint>.arrow` (cache: `hf_datasets.cache_dir(cache_dir)`), the fingerprint
  hashing the dialogues, the tokenizer (`tokenizer_fingerprint`), role, max_len, kw and
  WINDOWS_VERSION: a rerun on the same inputs reads the examples instead of tokenizing again."""
  if role not in ("agent", "simulator"):
    raise ValueError(f"unknown SFT role {role!r}; expected 'agent' or 'simulator'")
  texts = [json.dumps(d.to_json()) for d in dialogues]  # key order kept: it orders the condition
  h = hashlib.sha256()
  for t in texts:
    h.update(hashlib.sha256(t.encode()).digest())
  h.update(json.dumps([tokenizer_fingerprint(tok), role, max_len, sorted(kw.items(), key=str), WINDOWS_VERSION],
                      default=str).encode())
  key = h.hexdigest()[:32]
  source = datasets.Dataset.from_dict({"id": [d.id for d in dialogues], "dialogue": texts},
                                      features=datasets.Features({"id": datasets.Value("string"),
                                                                  "dialogue": datasets.Value("string")}))
  cache = hf_datasets.cache_dir(cache_dir)
  os.makedirs(cache, exist_ok=True)
  return source.map(_examples_batch, batched=True, batch_size=64, remove_columns=["dialogue"],
                    fn_kwargs={"tok": tok, "role": role, "max_len": max_len, "kw": kw}, new_fingerprint=key,
                    cache_file_name=os.path.join(cache, f"sft-{key}.arrow"), load_from_cache_file=True,
                    features=EXAMPLE_FEATURES)


EXAMPLE_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "input_ids": datasets.List(datasets.List(datasets.Value("int32"))),
    "loss_mask": datasets.List(datasets.List(datasets.Value("int8"))), "stats": datasets.Value("string")})


def build_arrays(dialogues: Sequence[Dialogue], tok, role: str, max_len: int,
                 buckets: Sequence[int] | None = None, *, cache_dir: str | None = None, **kw
                 ) -> tuple[dict[int, dict[str, np.ndarray]], dict]:
  """role "agent" | "simulator" → (bucketed arrays, stats {"examples", "target_tokens", ...});
  the examples come from `examples_dataset` (cached by fingerprint under `cache_dir`)."""
  ds = examples_dataset(dialogues, tok, role, max_len, cache_dir=cache_dir, **kw)
  cols = ds.to_dict()
  stats: dict = {}
  exs = []
  for did, ids, masks, st in zip(cols["id"], cols["input_ids"], cols["loss_mask"], cols["stats"]):
    exs.extend(Example(i, m, did, role) for i, m in zip(ids, masks))
    for k, v in json.loads(st).items():
      stats[k] = stats.get(k, 0) + v
  stats["examples"] = len(exs)
  stats["target_tokens"] = int(sum(sum(e.loss_mask) for e in exs))
  return pad_to_buckets(exs, tok.pad_id, max_len, buckets), stats


def next_token_arrays(input_ids: np.ndarray, loss_mask: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs [B, T-1], targets [B, T-1], weights [B, T-1]): logits of inputs[:, t] predict
  targets[:, t] = input_ids[:, t + 1], weighted by loss_mask[:, t + 1]."""
  return input_ids[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]


class BatchIterator:
  """Fixed-shape batches per bucket, shuffled by (seed, epoch), resumable: the one batcher of
  SFT examples and DPO pairs.

  buckets: {bucket key: {name: array [N, ...]}} (the arrays of a bucket share N; any names).
  Each epoch: rows of every bucket are permuted, chunked into batches (a last partial batch is
  filled with repeated rows whose "row_weight" is 0 and, if present, "loss_mask" zeroed, so
  nothing is dropped and shapes stay fixed), and the batches of all buckets are shuffled together.
  Every batch also holds "row_weight" float32 [B]. `state()` = {"epoch", "step"} of the NEXT
  batch; `BatchIterator(..., epoch=e, step=s)` resumes exactly there.
  """

  def __init__(self, buckets: Mapping, batch_size: int, seed: int = 0,
               *, epoch: int = 0, step: int = 0, num_epochs: int | None = None):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.buckets = {k: v for k, v in buckets.items() if len(next(iter(v.values())))}
    if not self.buckets:
      raise ValueError("BatchIterator: no examples")
    self.batch_size, self.seed, self.num_epochs = batch_size, seed, num_epochs
    self.epoch, self.step = epoch, step

  @staticmethod
  def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))

  @property
  def steps_per_epoch(self) -> int:
    return sum(-(-self._rows(v) // self.batch_size) for v in self.buckets.values())

  def state(self) -> dict:
    return {"epoch": self.epoch, "step": self.step}

  def _plan(self, epoch: int) -> list[tuple[Any, np.ndarray, int]]:
    rng = np.random.default_rng([self.seed, epoch])
    plan = []
    for b in sorted(self.buckets, key=lambda k: (str(type(k)), k)):
      n = self._rows(self.buckets[b])
      perm = rng.permutation(n)
      for s in range(0, n, self.batch_size):
        idx = perm[s:s + self.batch_size]
        real = len(idx)
        if real < self.batch_size:
          idx = np.concatenate([idx, np.resize(perm, self.batch_size - real)])
        plan.append((b, idx, real))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]

  def _batch(self, b, idx: np.ndarray, real: int) -> dict[str, np.ndarray]:
    batch = {k: v[idx] for k, v in self.buckets[b].items()}
    weight = np.ones((len(idx),), np.float32)
    weight[real:] = 0.0
    batch["row_weight"] = weight
    if real < len(idx) and "loss_mask" in batch:
      batch["loss_mask"][real:] = 0
    return batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    while self.num_epochs is None or self.epoch < self.num_epochs:
      plan = self._plan(self.epoch)
      if self.step >= len(plan):
        raise ValueError(f"BatchIterator: step {self.step} out of range for epoch of "
                         f"{len(plan)} batches")
      while self.step < len(plan):
        b, idx, real = plan[self.step]
        batch = self._batch(b, idx, real)
        self.step += 1
        if self.step == len(plan):
          self.epoch, self.step = self.epoch + 1, 0
        yield batch
        if self.step == 0:
          break
