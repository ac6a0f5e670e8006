"""The one token log-prob function: the log-prob of each target token under the logits that
predict it, in fp32. The training losses (SFT, DPO) and `sampling.sequence_logprobs` all use it."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logps(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """logits [..., V] (any float dtype, upcast to fp32), targets [...] int → fp32 log-probs [...].
  The caller aligns them: for a sequence, `token_logps(logits[:, :-1], input_ids[:, 1:])`
  (logits[t] predicts token t+1)."""
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)
