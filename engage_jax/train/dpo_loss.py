"""The DPO objective: sequence log-probs of a pair batch, the per-pair losses, and the loop's loss_fn.

A pair batch (`train.pair_data`): prompt left-padded to P, completions right-padded to C;
`prompt_ids/prompt_mask [B, P]`, `chosen_ids/chosen_mask, rejected_ids/rejected_mask [B, C]`,
`ref_chosen/ref_rejected [B]` (`train.reference`), `row_weight [B]`. One forward over the
concatenation `[2B, P + C]` (chosen rows, then rejected rows) gives both sequence log-probs; the
LM head runs only on the C positions that predict completion tokens.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from engage_jax.logprobs import token_logps
from engage_jax.train.config import LOSS_TYPES, DPOConfig
from engage_jax.train import loop



def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = DPOConfig.beta, loss_type: str = DPOConfig.loss_type,
             label_smoothing: float = DPOConfig.label_smoothing):
  """DPO losses per pair. All inputs [B] (sequence log-probs; for IPO pass length-averaged ones).

  Δ = (π_c - π_r) - (ref_c - ref_r), ε = label_smoothing:
    sigmoid: -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)            (conservative DPO when ε > 0)
    robust:  ((1-ε)·(-logσ(βΔ)) + ε·logσ(-βΔ)) / (1-2ε)
    hinge:   relu(1 - βΔ)
    ipo:     (Δ - 1/(2β))²
  Returns (losses [B], chosen_rewards [B], rejected_rewards [B]) with rewards β·(π - ref)
  (no gradient through the rewards).
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if not 0.0 <= label_smoothing <= 0.5 or (loss_type == "robust" and label_smoothing >= 0.5):
    raise ValueError(f"label_smoothing must be in [0, 0.5) (robust) / [0, 0.5], got {label_smoothing}")
  if beta <= 0:
    raise ValueError(f"beta must be positive, got {beta}")
  pc, pr = jnp.asarray(policy_chosen_logps), jnp.asarray(policy_rejected_logps)
  rc, rr = jnp.asarray(ref_chosen_logps), jnp.asarray(ref_rejected_logps)
  logits = (pc - pr) - (rc - rr)
  eps = label_smoothing
  if loss_type == "sigmoid":
    losses = -jax.nn.log_sigmoid(beta * logits) * (1 - eps) - jax.nn.log_sigmoid(-beta * logits) * eps
  elif loss_type == "robust":
    losses = (-jax.nn.log_sigmoid(beta * logits) * (1 - eps)
              + jax.nn.log_sigmoid(-beta * logits) * eps) / (1 - 2 * eps)
  elif loss_type == "hinge":
    losses = jax.nn.relu(1 - beta * logits)
  else:
    losses = (logits - 1 / (2 * beta)) ** 2
  chosen_rewards = beta * jax.lax.stop_gradient(pc - rc)
  rejected_rewards = beta * jax.lax.stop_gradient(pr - rr)
  return losses, chosen_rewards, rejected_rewards


def sequence_logps(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
  """One forward over [2B, P + C]. Returns (chosen_logps [B], rejected_logps [B],
  chosen_tokens [B], rejected_tokens [B]); log-probs are fp32 sums over completion tokens."""
  pid, pm = batch["prompt_ids"], batch["prompt_mask"]
  b, p = pid.shape
  ids = jnp.concatenate([jnp.concatenate([pid, batch["chosen_ids"]], 1),
                         jnp.concatenate([pid, batch["rejected_ids"]], 1)], 0)
  cmask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
  att = jnp.concatenate([jnp.concatenate([pm, pm], 0), cmask], 1)
  hidden = model.hidden_states(ids, att)                         # [2B, P+C, D]
  logits = model.logits(hidden[:, p - 1:-1])                     # [2B, C, V] fp32
  lp = token_logps(logits, ids[:, p:]) * cmask               # [2B, C]
  seq = jnp.sum(lp, axis=-1)
  cnt = jnp.sum(cmask, axis=-1).astype(jnp.float32)
  return seq[:b], seq[b:], cnt[:b], cnt[b:]


def dpo_loss_fn(graphdef, rest, beta: float, loss_type: str, label_smoothing: float, rpo_alpha: float):
  """loss_fn(params, batch) for the loop: weighted mean DPO loss + TRL-style metrics.

  rpo_alpha > 0 adds TRL's RPO term: rpo_alpha × the chosen completions' mean per-token NLL, which
  keeps the chosen likelihood from collapsing while the margin grows (metric "nll_loss")."""

  def loss_fn(params, batch, frozen=None):
    model = loop.merge_model(graphdef, params, rest, frozen)
    pc, pr, nc, nr = sequence_logps(model, batch)
    nll = -pc / jnp.maximum(nc, 1.0)
    rc, rr = batch["ref_chosen"], batch["ref_rejected"]
    if loss_type == "ipo":  # TRL averages log-probs over completion tokens for IPO
      pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing)
    w = batch["row_weight"]
    mean = lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {"rewards/chosen": mean(cr), "rewards/rejected": mean(rj),
               "rewards/accuracies": mean((cr > rj).astype(jnp.float32)),
               "rewards/margins": mean(cr - rj), "logps/chosen": mean(pc), "logps/rejected": mean(pr),
               "nll_loss": mean(nll)}
    return mean(losses) + rpo_alpha * mean(nll), metrics

  return loss_fn
