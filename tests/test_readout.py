"""engage_jax.readout: the expected-outcome readout equals a hand computation from the candidate
answers' log-probs (full uncached forward, the sampler's temperature / top-p rule), and the
rollout's P4G outcome with reward.readout "expected" is that value, never unparsed."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engage_jax import readout, rollout
from engage_jax.data import chat, sandbox
from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn
from engage_jax.logprobs import token_logps
from engage_jax.models import CausalLM, ModelConfig
from engage_jax.sampling import SamplingParams, filter_mask
from engage_jax.tokenizer import train_bpe

AMOUNTS = (0.0, 0.25, 0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = [t.text for d in sandbox.generate("p4g", 40, 0) for t in d.turns]
  texts += [chat.END_MARKER, chat.OUTCOME_REQUEST] + [chat.outcome_line(a) for a in AMOUNTS]
  return train_bpe(texts, 400, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tok):
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
  model = CausalLM(cfg, rngs=nnx.Rngs(3))
  # weights x25 (std 0.5): attention and the answer distribution far from uniform, so a wrong
  # position or mask in the cached path shows in the log-probs
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x * 25.0 if x.ndim == 2 else x, params))
  return model


def _chats():
  turns = [Turn(AGENT, "would you like to donate to save the children ?"), Turn(USER, "maybe , tell me more .")]
  return [Dialogue("a", "p4g", turns, {"motivation": "numbers"}, {}),
          Dialogue("b", "p4g", turns[:1] + [Turn(USER, "ok .")], {"motivation": "people"}, {}),
          Dialogue("c", "p4g", turns + turns, {}, {})]


def _hand_logps(model, prompt, answers, sampling):
  """(sampler, plain) sums of log-probs [M] of each answer after `prompt` from ONE full uncached,
  right-padded forward over the M rows prompt + answer (jitted; the sampler's rule written out)."""
  n, width = len(prompt), len(prompt) + max(map(len, answers))
  ids = np.zeros((len(answers), width), np.int32)
  target, mask = np.zeros_like(ids), np.zeros_like(ids)
  for i, a in enumerate(answers):
    ids[i, :n + len(a)] = prompt + a
    mask[i, :n + len(a)] = 1
    target[i, n:n + len(a)] = 1
  graphdef, state = nnx.split(model)
  temp = sampling.temperature or 1.0

  @jax.jit
  def fn(state, ids, mask, target):
    logits = nnx.merge(graphdef, state)(ids, attention_mask=mask)[:, :-1]   # [M, W-1, V]
    tgt, keep_t = ids[:, 1:], target[:, 1:] > 0
    plain = jnp.sum(jnp.where(keep_t, token_logps(logits, tgt), 0.0), -1)
    if sampling.temperature == 0.0:
      lp = jnp.where(tgt == jnp.argmax(logits, -1), 0.0, -jnp.inf)
    else:
      lg = (logits / temp).reshape(-1, logits.shape[-1])
      lg = jnp.where(filter_mask(lg, jnp.float32(sampling.top_p), jnp.int32(sampling.top_k)), lg, -jnp.inf)
      lg = lg.reshape(logits.shape)
      lp = jnp.take_along_axis(lg, tgt[..., None], -1)[..., 0] - jax.nn.logsumexp(lg, -1)
    return jnp.sum(jnp.where(keep_t, lp, 0.0), -1), plain

  sampler, plain = fn(state, ids, mask, target)
  return np.asarray(sampler, np.float64), np.asarray(plain, np.float64)


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9),
                                      SamplingParams(temperature=0.0)])
def test_readout_equals_hand_computation(tok, model, sampling):
  sim = rollout.Speaker(model, tok, max_prompt_len=96, sampling=sampling)
  dialogues = _chats()
  got = readout.expected_donations(sim, dialogues, AMOUNTS)
  cands = readout.candidates(tok, AMOUNTS)
  answers = [list(cands.prefix) + [int(t) for t, m in zip(s, k) if m] for s, k in zip(cands.suffix, cands.suffix_mask)]
  assert [tok.decode(a).strip() for a in answers] == [chat.outcome_line(a) for a in AMOUNTS]
  assert all(a[-1] == tok.end_of_turn_id for a in answers)
  prompts = [readout.outcome_prompt(sim, d) for d in dialogues]
  cand_lp, cand_plain = readout.candidate_logps(model, prompts, cands, sampling)     # [N, M] each
  for d, g, prompt, c_lp, c_plain in zip(dialogues, got, prompts, cand_lp, cand_plain):
    lp, plain = _hand_logps(model, prompt, answers, sampling)
    np.testing.assert_allclose(c_plain, plain, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.isfinite(c_lp), np.isfinite(lp))
    fin = np.isfinite(lp)
    np.testing.assert_allclose(c_lp[fin], lp[fin], rtol=1e-5, atol=1e-5)
    use = lp if np.isfinite(lp).any() else plain
    p = np.exp(use - use.max())
    p /= p.sum()
    expected = float(p @ np.asarray(AMOUNTS))
    assert g["reward"] == g["expected_donation"]
    assert abs(g["expected_donation"] - expected) <= 1e-4 * max(1.0, abs(expected)), (d.id, g, expected)
    mass = float(np.exp(use).sum())
    assert abs(g["outcome_mass"] - mass) <= 1e-4 * mass + 1e-30
    assert g["outcome_fallback"] == (not np.isfinite(lp).any())


def test_candidates_common_prefix_and_errors(tok):
  c = readout.candidates(tok, AMOUNTS)
  assert len(c.prefix) >= 1 and c.suffix.shape[0] == len(AMOUNTS) and c.suffix.shape[1] >= 2
  assert len({tuple(s[m > 0]) for s, m in zip(c.suffix, c.suffix_mask)}) == len(AMOUNTS)
  with pytest.raises(ValueError, match="no outcome amounts"):
    readout.candidates(tok, ())
  dl = [Dialogue("x", "p4g", [], {}, {"donation": v}) for v in (0.5, 0.499999, 3.0, 2.0)]
  assert readout.outcome_amounts(dl, cap=2.0, step=0) == (0.5, 2.0)
  grid = readout.outcome_amounts(dl, cap=2.0)                 # + every $0.05 up to $3
  assert len(grid) == 61 and grid[0] == 0.0 and grid[-1] == 3.0 and {0.5, 1.5, 2.25} <= set(grid)


def test_amounts_above_the_cap_count_as_the_cap(tok, model):
  sim = rollout.Speaker(model, tok, max_prompt_len=96, sampling=SamplingParams(temperature=1.0))
  amounts = (0.0, 1.0, 3.0)
  got = readout.expected_donations(sim, _chats(), amounts, cap=2.0)
  probs, _, _ = readout.distribution(*readout.candidate_logps(
      model, [readout.outcome_prompt(sim, d) for d in _chats()], readout.candidates(tok, amounts), sim.sampling))
  for g, p in zip(got, probs):
    assert g["expected_donation"] == pytest.approx(p[1] * 1.0 + p[2] * 2.0, rel=1e-6)


def test_rollout_with_expected_readout(tok, model):
  agent = rollout.Speaker(model, tok, max_prompt_len=96, sampling=SamplingParams(max_new_tokens=4, temperature=1.0))
  sim = rollout.Speaker(model, tok, max_prompt_len=96, sampling=SamplingParams(max_new_tokens=4, temperature=1.0))
  cfg = {"readout": "expected", "outcome_amounts": AMOUNTS}
  starts = [Dialogue(f"s{i}", "p4g", [], {"motivation": "numbers"}, {}) for i in range(3)]
  out = rollout.simulate(agent, sim, starts, task="p4g", max_agent_turns=1, reward_cfg=cfg, seed=0)
  direct = readout.expected_donations(sim, out, AMOUNTS)
  for d, e in zip(out, direct):
    assert "donation" not in d.outcome           # never "unparsed"
    assert d.outcome["reward"] == pytest.approx(e["expected_donation"], rel=1e-6)
    assert 0.0 <= d.outcome["reward"] <= 2.0
  both = rollout.score_finished(sim, out, task="p4g", reward_cfg=dict(cfg, readout="both"), seed=0)
  for b, e in zip(both, direct):
    assert b["reward"] == pytest.approx(e["expected_donation"], rel=1e-6)
    assert "sampled_donation" in b and isinstance(b["outcome_text"], str)


def test_report_keeps_the_sampled_metric_beside_the_expected_one():
  from engage_jax import report

  def run(expected, sampled):
    return [Dialogue(f"c{i}/s0", "p4g", [], {}, {"reward": e, "expected_donation": e, "sampled_donation": s,
                                                  "outcome_text": "x", "num_turns": 2, "condition_id": f"c{i}",
                                                  "outcome_mass": 0.5 + 0.1 * i})
            for i, (e, s) in enumerate(zip(expected, sampled))]
  sft = run([0.4, 0.6, 0.5, 0.2], [0.5, None, 1.0, 0.0])
  dpo = run([0.9, 1.1, 0.8, 0.7], [1.0, 2.0, None, 0.25])
  rep = report.build_report("p4g", sft, dpo, pairs_count=3, wall_seconds={})
  assert rep["sft"]["reward_mean"] == pytest.approx(0.425) and rep["sft"]["n"] == 4   # expected: none unparsed
  sr = rep["extra"]["sampled_readout"]
  assert sr["sft"]["reward_mean"] == pytest.approx(0.5) and sr["sft"]["n"] == 3
  assert sr["dpo"]["reward_mean"] == pytest.approx(3.25 / 3) and sr["unparsed"]["dpo"]["count"] == 1
  assert 0.0 <= sr["p_value"] <= 1.0
  assert "sampled, parsed outcome" in report.render_markdown(rep)
  assert rep["extra"]["simulator"]["dpo"]["outcome_mass_mean"] == pytest.approx(0.65)
  assert rep["extra"]["simulator"]["dpo"]["donation_stated"] == 0.75      # the sampled answers: 3 of 4 parsed


@pytest.mark.slow
def test_expected_readout_agrees_with_sampled_parsed_readouts_sandbox(tmp_path):
  """A sandbox P4G simulator (tiny model, 150 SFT steps on 4-turn chats + their outcome line):
  on fixed held-out chats the expected readout lies in the 99% interval of the mean of 128
  sampled, parsed outcome answers (T = 1 and T = 0.7 / top-p 0.9; one batched generate call each)."""
  import dataclasses
  from engage_jax import rewards
  from engage_jax.data import sft
  from engage_jax.train.sft import train_sft
  cut = lambda ds: [dataclasses.replace(d, turns=d.turns[:4]) for d in ds]
  corpus = cut(sandbox.generate("p4g", 300, 0))
  tok = train_bpe(list(sft.tokenizer_texts(corpus)) + sandbox.all_texts("p4g"), 400, tmp_path / "tok")
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
  model = CausalLM(cfg, rngs=nnx.Rngs(0))
  arrays, _ = sft.build_arrays(corpus, tok, "simulator", 128, buckets=(128,))
  model, _ = train_sft(model, arrays, dict(steps=150, batch_size=16, learning_rate=3e-3, warmup_steps=10,
                                           progress=False, log_every=50, eval_at_start=False, max_len=128),
                       str(tmp_path / "sft"))
  amounts = readout.outcome_amounts(corpus, 2.0)
  chats = cut(sandbox.generate("p4g", 2, 7))
  for sampling in (SamplingParams(max_new_tokens=16, temperature=1.0),
                   SamplingParams(max_new_tokens=16, temperature=0.7, top_p=0.9)):
    sim = rollout.Speaker(model, tok, max_prompt_len=128, sampling=sampling)
    expected = readout.expected_donations(sim, chats, amounts)
    msgs = [chat.simulator_messages("p4g", d.condition, d.turns, mark_end=True)
            + [{"role": "user", "content": chat.OUTCOME_REQUEST}] for d in chats]
    texts = sim.generate([m for m in msgs for _ in range(128)], seed=5)
    for i, e in enumerate(expected):
      got = [rewards.parse_donation(t) for t in texts[128 * i:128 * (i + 1)]]
      v = np.array([x for x in got if x is not None])
      half = 2.576 * v.std(ddof=1) / np.sqrt(v.size)
      assert v.size >= 100 and e["outcome_mass"] > 0.5, (v.size, e)      # the simulator learned the lines
      assert abs(v.mean() - e["expected_donation"]) <= half, (sampling, i, v.mean(), half, e)
