"""Multi-target SFT windows against per-turn references built from whole-chat renders
(`tok.apply_chat`), independent of the segment code in data/sft.py: coverage (every target token
once, the exact target ids), window shape (contiguous chat, maximal history, max_len, buckets) and
the loss (summed token loss and its gradient equal the per-turn examples' sums)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engage_jax.data import chat, esconv, p4g, sandbox, sft
from engage_jax.models import CausalLM, ModelConfig
from engage_jax.train import loop


def views(dialogues, role, condition_keys=None):
  """[(messages, target indices)] of each dialogue's agent or simulator view (as sft builds them)."""
  out = []
  for d in dialogues:
    msgs = (chat.agent_messages(d.task, d.turns) if role == "agent"
            else sft.simulator_messages_with_outcome(d, condition_keys=condition_keys))
    if msgs is not None:
      out.append((msgs, [j for j in range(1, len(msgs)) if msgs[j]["role"] == "assistant"]))
  return out


def reference(tok, msgs, j):
  """Today's per-turn example of target j with its full history: (prompt ids, target ids)."""
  prompt = tok.apply_chat(msgs[:j], add_generation_prompt=True)
  full = tok.apply_chat(msgs[:j + 1])
  assert full[:len(prompt)] == prompt
  target = full[len(prompt):]
  return prompt, target[:target.index(tok.end_of_turn_id) + 1]


def runs(ex):
  """The masked-in spans of an example: [(start, ids)]."""
  out, t = [], 0
  m = ex.loss_mask
  while t < len(m):
    if m[t]:
      s = t
      while t < len(m) and m[t]:
        t += 1
      out.append((s, ex.input_ids[s:t]))
    t += 1
  return out


def check_windows(tok, msgs, targets, max_len):
  """Every window property this module promises, for one chat; returns its windows.

  A target that alone does not fit keeps the per-turn rule: no history and its tail cut, or
  dropped if the system message + its header alone fill max_len."""
  exs = sft.examples_from_messages(tok, msgs, max_len, targets=targets)
  eot = tok.end_of_turn_id
  ends = [len(tok.apply_chat(msgs[:k + 1])) for k in range(len(msgs))]   # message k ends at ends[k]
  full = tok.apply_chat(msgs)
  head = full[:ends[0]]
  want, kept, alone = [], [], {}
  for j in targets:
    prompt, target = reference(tok, msgs, j)
    fixed = ends[0] + len(prompt) - ends[j - 1]  # system message + target j's header
    if fixed < max_len:
      want.append(target[:max_len - fixed])
      kept.append(j)
      alone[j] = fixed + len(target)  # target j with no history
  got = [ids for ex in exs for _, ids in runs(ex)]
  assert got == want  # every target exactly once, in order, its exact ids (content + end of turn)
  pos = 0
  for ex in exs:
    assert len(ex.input_ids) == len(ex.loss_mask) <= max_len
    assert ex.input_ids[:len(head)] == head  # the system message is always there
    body = ex.input_ids[len(head):]
    # a contiguous piece of the chat from a message boundary (window = messages k+1..)
    k = next(k for k in range(len(msgs)) if full[ends[k]:ends[k] + len(body)] == body)
    assert body[-1] == eot or len(ex.input_ids) == max_len  # ends on an end of turn (or a cut target)
    if k > 0:  # as much history as fits: one more message would not
      assert len(ex.input_ids) + ends[k] - ends[k - 1] > max_len
    first, pos = kept[pos], pos + len(runs(ex))
    if k + 1 == first > 1:  # the first target keeps the message it answers, unless that cannot fit
      assert alone[first] + ends[first - 1] - ends[first - 2] > max_len
  return exs


@pytest.mark.parametrize("task", ["es", "p4g"])
@pytest.mark.parametrize("role", ["agent", "simulator"])
def test_sandbox_windows(sandbox_tok, task, role):
  for msgs, targets in views(sandbox.generate(task, 6, 11), role):
    for max_len in (64, 128, 1024):
      exs = check_windows(sandbox_tok, msgs, targets, max_len)
      if len(tok_full := sandbox_tok.apply_chat(msgs)) <= max_len:  # a chat that fits: one example
        assert len(exs) == 1 and tok_full[:len(exs[0].input_ids)] == exs[0].input_ids


@pytest.fixture(scope="module")
def smollm2_tok():
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  return ChatTokenizer.load(smollm2_135m_instruct())


P4G_KEYS = ("age", "sex", "income", "ideology", "benevolence", "universalism", "care")  # p4g_smollm2


def real_dialogues(shared_data):
  es = sorted(esconv.load_split(shared_data, "valid"), key=lambda d: -len(d.turns))[:3]
  pg = sorted(p4g.load_split(shared_data, "valid"), key=lambda d: -len(d.turns))[:3]
  return es + pg


@pytest.mark.data
@pytest.mark.parametrize("which", ["sandbox", "smollm2"])
def test_real_dialogues_every_target_once(shared_data, sandbox_tok, smollm2_tok, which):
  tok = sandbox_tok if which == "sandbox" else smollm2_tok
  dialogues = real_dialogues(shared_data)
  for role in ("agent", "simulator"):
    vs = views(dialogues, role, P4G_KEYS) + views(dialogues[3:], role)  # P4G: config keys, and all
    n_windows = 0
    for msgs, targets in vs:
      # the longest chats at the configs' max_len: several overlapping windows each
      n_windows += len(check_windows(tok, msgs, targets, 256))
    assert n_windows > 2 * len(vs)
    # the trainer's buckets (base: min_bucket 32; esconv_smollm2: one bucket of 256)
    for min_bucket in (32, 256):
      buckets = sft.default_buckets(256, min_bucket)
      kw = {"condition_keys": P4G_KEYS} if role == "simulator" else {}
      arrays, stats = sft.build_arrays(dialogues, tok, role, 256, buckets, **kw)
      assert set(arrays) <= set(buckets)
      for b, a in arrays.items():
        assert all(a[key].shape == (len(a["input_ids"]), b) for key in sft.ARRAY_KEYS)
      assert sum(int(a["loss_mask"].sum()) for a in arrays.values()) == stats["target_tokens"] == sum(
          len(ids) for m, ts in views(dialogues, role, P4G_KEYS) for ex in
          sft.examples_from_messages(tok, m, 256, targets=ts) for _, ids in runs(ex))


@pytest.mark.parametrize("role", ["agent", "simulator"])
def test_window_loss_and_gradient_equal_per_turn_sums(sandbox_tok, role):
  tok = sandbox_tok
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
  model = CausalLM(cfg, rngs=nnx.Rngs(0))
  msgs, targets = views(sandbox.generate("p4g", 1, 7), role)[0]
  (ex,) = sft.examples_from_messages(tok, msgs, 1024, targets=targets)  # the history fits
  assert len(targets) >= 3
  per_turn = []
  for j in targets:
    prompt, target = reference(tok, msgs, j)
    per_turn.append(sft.Example(prompt + target, [0] * len(prompt) + [1] * len(target)))
  # one padded batch shape [N, T] for both: the per-turn rows, and the window + empty rows
  N, T = len(per_turn), max(len(e.input_ids) for e in per_turn + [ex])
  old = sft.pad_to_buckets(per_turn, tok.pad_id, T, (T,))[T]
  new = sft.pad_to_buckets([ex] + [sft.Example([tok.pad_id], [0])] * (N - 1), tok.pad_id, T, (T,))[T]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def summed(p, batch):
    """The summed target-token NLL of a batch and its gradient."""
    def total(p):
      m = nnx.merge(graphdef, p, rest)
      logits = m(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(jnp.float32)
      lp = jax.nn.log_softmax(logits[:, :-1], -1)
      tok_lp = jnp.take_along_axis(lp, batch["input_ids"][:, 1:, None], -1)[..., 0]
      return -jnp.sum(tok_lp * batch["loss_mask"][:, 1:])
    return jax.value_and_grad(total)(p)

  (lw, gw), (lp, gp) = summed(params, new), summed(params, old)
  np.testing.assert_allclose(float(lw), float(lp), rtol=1e-5)
  gw, gp = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (gw, gp))
  assert np.linalg.norm(gw - gp) <= 1e-4 * np.linalg.norm(gp)
  # the trainer's objective (loop.lm_loss_fn: mean over target tokens) of the same batches
  loss_fn = jax.jit(loop.lm_loss_fn(graphdef, rest))
  (l_old, a_old), (l_new, a_new) = loss_fn(params, old), loss_fn(params, new)
  n_tokens = sum(sum(e.loss_mask) for e in per_turn)
  assert float(a_old["tokens"]) == float(a_new["tokens"]) == n_tokens
  np.testing.assert_allclose(float(l_new), float(l_old), rtol=1e-5)
  np.testing.assert_allclose(float(l_new) * n_tokens, float(lp), rtol=1e-5)
