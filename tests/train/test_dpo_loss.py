"""dpo_loss against independent numpy formulas (TRL's definitions) for every loss type."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engage_jax import dpo

# Tolerances: dpo_loss in fp32 against float64 numpy on log-probs of magnitude ~40: relative
# (rtol 2e-5) plus an absolute floor scaled by the values' largest magnitude, so they hold on any
# x86-64 CPU. Exactly 0 where the computation is exactly 0 (equal inputs, stop_gradient).


def _logsig(x):
  return -np.logaddexp(0.0, -x)


def _reference(pc, pr, rc, rr, beta, loss_type, eps):
  d = (pc - pr) - (rc - rr)
  if loss_type == "sigmoid":
    loss = -(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d)
  elif loss_type == "robust":
    loss = ((1 - eps) * -_logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps)
  elif loss_type == "hinge":
    loss = np.maximum(0.0, 1 - beta * d)
  else:
    loss = (d - 1 / (2 * beta)) ** 2
  return loss, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_numpy(loss_type, beta, eps):
  rng = np.random.default_rng(int(beta * 100) + int(eps * 10))
  pc, pr, rc, rr = (rng.normal(-40, 15, 64) for _ in range(4))
  got = dpo.dpo_loss(jnp.asarray(pc, jnp.float32), jnp.asarray(pr, jnp.float32), jnp.asarray(rc, jnp.float32),
                     jnp.asarray(rr, jnp.float32), beta=beta, loss_type=loss_type, label_smoothing=eps)
  want = _reference(pc, pr, rc, rr, beta, loss_type, eps)
  for g, w, name in zip(got, want, ("losses", "chosen_rewards", "rejected_rewards")):
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-4 * max(1.0, float(np.abs(w).max())) ** 0.5,
                               err_msg=f"{loss_type} {name}")


def test_equal_policy_and_ref_is_log2_and_zero_rewards():
  z = jnp.full((3,), -12.0)
  losses, cr, rr = dpo.dpo_loss(z, z - 1, z, z - 1)
  np.testing.assert_allclose(np.asarray(losses), np.log(2.0), rtol=1e-6)
  assert float(jnp.abs(cr).max()) == 0.0 and float(jnp.abs(rr).max()) == 0.0


def test_gradient_pushes_chosen_up():
  def f(pc, pr):
    return jnp.sum(dpo.dpo_loss(pc, pr, jnp.zeros(2), jnp.zeros(2), beta=0.1)[0])
  gc, gr = jax.grad(f, argnums=(0, 1))(jnp.zeros(2), jnp.zeros(2))
  assert (np.asarray(gc) < 0).all() and (np.asarray(gr) > 0).all()


def test_no_gradient_through_rewards():
  """Policy != reference: without stop_gradient, d(sum rewards)/d(policy) would be beta each."""
  pc, pr = jnp.array([-3.0, -5.0]), jnp.array([-4.0, -2.0])
  rc, rr = jnp.array([-6.0, -1.0]), jnp.array([-2.5, -7.0])
  rewards = lambda pc, pr: jnp.sum(sum(dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)[1:]))
  g = jax.grad(rewards, argnums=(0, 1))(pc, pr)
  assert float(jnp.abs(g[0]).max()) == 0.0 and float(jnp.abs(g[1]).max()) == 0.0
  loss = lambda pc, pr: jnp.sum(dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)[0])
  both = lambda pc, pr: loss(pc, pr) + rewards(pc, pr)   # rewards add nothing to the gradient
  for a, b in zip(jax.grad(both, argnums=(0, 1))(pc, pr), jax.grad(loss, argnums=(0, 1))(pc, pr)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kw", [dict(loss_type="kto"), dict(beta=0.0), dict(label_smoothing=0.7),
                                dict(loss_type="robust", label_smoothing=0.5)])
def test_bad_settings(kw):
  z = jnp.zeros(2)
  with pytest.raises(ValueError):
    dpo.dpo_loss(z, z, z, z, **kw)
