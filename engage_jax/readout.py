"""Expected-outcome readout (P4G): the simulator's distribution over its canonical outcome answers.

    amounts = outcome_amounts(corpus["train"], cap=2.0)         # corpus amounts + a $0.05 grid to $3
    values = expected_donations(simulator_speaker, finished_chats, amounts)   # [N] dollars

After a finished chat the simulator is asked `chat.OUTCOME_REQUEST`; instead of sampling its answer
and parsing it (`rollout.score_finished`, readout "sampled"), the readout scores every canonical
answer `chat.outcome_line(x)` (+ the end-of-turn token) for the amounts x of the training corpus
and a grid (`outcome_amounts`) with one teacher-forced pass, normalises over the M candidates and returns the mean amount:

    p(x | chat) = exp(lp_x) / sum_y exp(lp_y),   value = sum_x p(x | chat) * min(x, cap)

where lp_x is the log-probability of the answer's tokens under the simulator's own sampling
settings (`Speaker.sampling`): temperature T (token log-probs of logits / T), then top-k / top-p
exactly as `sampling.filter_mask` keeps them (a filtered-out token has probability 0); T = 0 is
greedy (probability 1 on the argmax token). So the value is the mean of the sampled, parsed readout
over the answers that are canonical lines, without sampling noise, and never unparsed. A chat whose
canonical answers all have probability 0 under the filter falls back to the plain model
distribution (T = 1, no filter); `mass` (the summed probability of the M candidates) says how much
of the simulator's answer distribution the canonical lines cover.

One jitted call per batch of chats: a prefill of [B, P] (the prompts, left-padded, followed by
the candidates' common prefix, e.g. "I will donate $"), then a `lax.scan` over the M candidates
that decodes each distinct suffix [B, L] against the prompt's KV cache (each candidate overwrites
the same L cache slots, so the cache is carried, never copied). B and P are bucketed like
`sampling.generate`; M and L are fixed by the amounts.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engage_jax import sharding
from engage_jax.buckets import bucket
from engage_jax.data import chat
from engage_jax.logprobs import token_logps
from engage_jax.sampling import MIN_BATCH_BUCKET, MIN_PROMPT_BUCKET, SamplingParams, filter_mask, left_pad


def outcome_amounts(dialogues: Iterable, cap: float, step: float = 0.05, beyond: float = 1.0) -> tuple[float, ...]:
  """The candidate amounts, ascending: the distinct donations of P4G dialogues with an
  outcome["donation"] (rounded to cents, as `outcome_line` writes them) at most `cap`, and a grid of
  every `step` dollars up to cap + `beyond` (step <= 0: none). The grid matters: a simulator
  trained on the corpus lines also writes other well-formed amounts ("$1.50", "$2.25"; the sandbox
  P4G simulator put 11% of its answer there, all above the corpus mean), and the readout clips them
  to the cap as the sampled parse does."""
  out = {round(float(d.outcome["donation"]), 2) for d in dialogues
         if d.outcome.get("donation") is not None and float(d.outcome["donation"]) <= cap + 1e-9}
  if step > 0:
    out |= {round(i * step, 2) for i in range(round((cap + beyond) / step) + 1)}
  return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class Candidates:
  """The canonical answers as token ids: amounts [M]; prefix [Lc] (shared by all answers);
  suffix / suffix_mask int32 [M, L] (each answer's remaining tokens incl. the end-of-turn token,
  right-padded; L >= 2)."""
  amounts: tuple[float, ...]
  prefix: tuple[int, ...]
  suffix: np.ndarray
  suffix_mask: np.ndarray


def _answer_ids(tok, content: str) -> list[int]:
  """The tokens the chat template renders for an assistant answer `content` after the generation
  prompt, through its end-of-turn token (as train.pair_data does for completions)."""
  msgs = [{"role": "user", "content": chat.OUTCOME_REQUEST}]
  gen = tok.apply_chat(msgs, add_generation_prompt=True)
  full = tok.apply_chat(msgs + [{"role": "assistant", "content": content}])
  eot = tok.end_of_turn_id
  if full[:len(gen)] == gen and eot in full[len(gen):]:
    rest = full[len(gen):]
    return rest[:rest.index(eot) + 1]
  return tok.encode(content) + [eot]


def candidates(tok, amounts: Sequence[float]) -> Candidates:
  """Token ids of `outcome_line(x)` for every amount (see `Candidates`)."""
  if not amounts:
    raise ValueError("readout: no outcome amounts (the training corpus has no P4G donations?)")
  amounts = tuple(float(a) for a in amounts)
  ids = [_answer_ids(tok, chat.outcome_line(a)) for a in amounts]
  if len({tuple(x) for x in ids}) != len(ids):
    raise ValueError(f"readout: two amounts of {amounts} render the same answer tokens")
  n = 0  # common prefix, leaving every answer at least one token of its own
  while all(len(x) > n + 1 for x in ids) and len({x[n] for x in ids}) == 1:
    n += 1
  rest = [x[n:] for x in ids]
  width = max(2, max(len(x) for x in rest))
  suffix = np.zeros((len(ids), width), np.int32)
  mask = np.zeros((len(ids), width), np.int32)
  for i, x in enumerate(rest):
    suffix[i, :len(x)] = x
    mask[i, :len(x)] = 1
  return Candidates(amounts, tuple(ids[0][:n]), suffix, mask)


def _mode(s: SamplingParams) -> str:
  if s.temperature == 0.0:
    return "greedy"
  return "filter" if (s.top_k > 0 or s.top_p < 1.0) else "sample"


def _sampler_logps(logits, targets, temperature, top_p, top_k, mode: str):
  """Log-probs [...] of `targets` [...] under the sampler (`sampling.sample_logits`'s rule) from
  fp32 logits [..., V]."""
  if mode == "greedy":
    return jnp.where(targets == jnp.argmax(logits, axis=-1), 0.0, -jnp.inf)
  logits = logits / temperature
  if mode == "filter":
    flat = logits.reshape(-1, logits.shape[-1])
    logits = jnp.where(filter_mask(flat, top_p, top_k), flat, -jnp.inf).reshape(logits.shape)
  return token_logps(logits, targets)


def _readout_core(graphdef, state, tokens, mask, suffix, suffix_mask, temperature, top_p, top_k, *,
                  n_prefix: int, mode: str):
  """tokens/mask [B, P]: left-padded prompts, each ending with the candidates' common prefix
  (n_prefix tokens); suffix/suffix_mask [M, L]. Returns (sampler log-probs [B, M], model
  log-probs [B, M]) of every whole answer (prefix + suffix) given its prompt."""
  model = nnx.merge(graphdef, state)
  b, p = tokens.shape
  m, ln = suffix.shape
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 0)
  kv_mask = jnp.concatenate([mask, jnp.ones((b, ln), mask.dtype)], axis=1)          # [B, P+L]
  hidden, cache = model.forward_cached(tokens, positions, model.init_cache(b, p + ln), 0, kv_mask,
                                       mode="prefill")
  logits = model.logits(hidden[:, p - n_prefix - 1:])                              # [B, Lc+1, V]
  both = lambda lg, t: (_sampler_logps(lg, t, temperature, top_p, top_k, mode), token_logps(lg, t))
  pre = [jnp.sum(x, axis=-1) for x in both(logits[:, :-1], tokens[:, p - n_prefix:])]   # 2 x [B]
  first_t = jnp.broadcast_to(suffix[None, :, 0], (b, m))                              # [B, M]
  last = jnp.broadcast_to(logits[:, -1:], (b, m, logits.shape[-1]))
  first = both(last, first_t)                                                        # 2 x [B, M]
  lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
  pos = lengths[:, None] + jnp.arange(ln, dtype=jnp.int32)[None]                     # [B, L]

  def one(cache, xs):
    ids, msk = xs                                                                    # [L], [L]
    ids_b = jnp.broadcast_to(ids[None], (b, ln))
    lg, cache = model.decode(ids_b, pos, cache, p, kv_mask)                           # [B, L, V]
    keep = (msk[1:] > 0)[None]
    out = [jnp.sum(jnp.where(keep, x, 0.0), axis=-1) for x in both(lg[:, :-1], ids_b[:, 1:])]
    return cache, jnp.stack(out)                                                     # [2, B]

  _, rest = jax.lax.scan(one, cache, (suffix, suffix_mask))                          # [M, 2, B]
  sampler = pre[0][:, None] + first[0] + rest[:, 0].T
  plain = pre[1][:, None] + first[1] + rest[:, 1].T
  return sampler, plain


_JIT: dict = {}


def candidate_logps(model, prompts: Sequence[Sequence[int]], cands: Candidates,
                    sampling: SamplingParams = SamplingParams(temperature=1.0)
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(sampler log-probs [N, M], model log-probs [N, M]) of every candidate answer after each of
  the N prompt id lists (generation prompt included), in one jitted call (see module docstring)."""
  cfg = model.config
  if not prompts:
    raise ValueError("readout: no prompts")
  rows = [list(map(int, x)) + list(cands.prefix) for x in prompts]
  longest = max(len(r) for r in rows) + cands.suffix.shape[1]
  if longest > cfg.max_position_embeddings:
    raise ValueError(f"readout: a prompt + outcome answer has {longest} tokens > "
                     f"max_position_embeddings={cfg.max_position_embeddings}")
  b = bucket(len(rows), MIN_BATCH_BUCKET)
  p = bucket(max(len(r) for r in rows), MIN_PROMPT_BUCKET, half_steps=False)
  tokens, mask = left_pad(rows, b, p)
  mode = _mode(sampling)
  graphdef, state = nnx.split(model)
  key = (graphdef, len(cands.prefix), mode)
  fn = _JIT.get(key)
  if fn is None:
    fn = _JIT[key] = jax.jit(functools.partial(_readout_core, graphdef, n_prefix=len(cands.prefix), mode=mode))
  temperature = sampling.temperature if sampling.temperature > 0 else 1.0
  s, m = sharding.to_host(fn(state, tokens, mask, cands.suffix, cands.suffix_mask, jnp.float32(temperature),
                             jnp.float32(sampling.top_p), jnp.int32(sampling.top_k)))
  return np.asarray(s, np.float64)[:len(rows)], np.asarray(m, np.float64)[:len(rows)]


def distribution(sampler_lp: np.ndarray, model_lp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """From candidate log-probs [N, M]: (probabilities [N, M] normalised over the candidates,
  mass [N] = their summed probability before normalising, fallback [N] bool = no candidate
  survived the sampler's filter, so the row uses the model log-probs)."""
  fallback = ~np.isfinite(sampler_lp).any(axis=1)
  lp = np.where(fallback[:, None], model_lp, sampler_lp)
  top = lp.max(axis=1, keepdims=True)
  w = np.exp(lp - top)
  mass = w.sum(axis=1)
  return w / mass[:, None], mass * np.exp(top[:, 0]), fallback


def outcome_prompt(simulator, d) -> list[int]:
  """The simulator's prompt ids for the outcome question after a finished chat `d`, exactly as
  the sampled readout builds it (`rollout.score_finished`)."""
  msgs = chat.simulator_messages(d.task, d.condition, d.turns, mark_end=True)
  return simulator.prompt(msgs + [{"role": "user", "content": chat.OUTCOME_REQUEST}])


def expected_donations(simulator, dialogues: Sequence, amounts: Sequence[float], cap: float = float("inf")
                       ) -> list[dict]:
  """Per finished P4G chat {"reward", "expected_donation" (the readout, dollars; each amount clipped
  to `cap` as `rewards.parse_donation` clips), "outcome_mass", "outcome_fallback"} from one batched
  scoring call of the simulator `rollout.Speaker`."""
  if not dialogues:
    return []
  cands = candidates(simulator.tokenizer, amounts)
  prompts = [outcome_prompt(simulator, d) for d in dialogues]
  probs, mass, fallback = distribution(*candidate_logps(simulator.model, prompts, cands, simulator.sampling))
  values = probs @ np.minimum(np.asarray(cands.amounts, np.float64), cap)
  return [{"reward": float(v), "expected_donation": float(v), "outcome_mass": float(ms),
           "outcome_fallback": bool(fb)} for v, ms, fb in zip(values, mass, fallback)]
