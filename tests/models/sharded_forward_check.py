"""Run in a subprocess with 8 forced host devices: sharded forward == unsharded forward (also with\nthe model's activation constraints on, under `jax.set_mesh`)."""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engage_jax import sharding
from engage_jax.models import CausalLM, ModelConfig


def main() -> int:
  assert jax.device_count() == 8, jax.devices()
  config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=4)
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 12)))
  mask = jnp.ones((8, 12), jnp.int32).at[1, :5].set(0)
  ref_model = CausalLM(config, rngs=nnx.Rngs(0))
  ref = np.asarray(ref_model(ids, attention_mask=mask))
  for shape in [(8, 1, 1), (2, 4, 1), (1, 2, 4)]:
    mesh = sharding.make_mesh(*shape)
    model = sharding.shard_model(CausalLM(config, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    state_sh = sharding.state_sharding(mesh, state)
    q = model.layers.self_attn.q_proj.kernel[...]  # stacked [L, D, H*hd]: the layer axis unsharded
    spec = q.sharding.spec
    assert spec[0] is None and q.addressable_shards[0].data.shape[0] == config.num_hidden_layers, spec
    if shape[1] > 1:
      assert spec[1] == "fsdp", (shape, spec)
      assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1] == 64 // shape[1], spec
    if shape[2] > 1:
      assert spec[2] == "tensor", (shape, spec)
      assert q.addressable_shards[0].data.shape[2] == 64 // shape[2], spec

    def fwd(state, ids, mask):
      return nnx.merge(graphdef, state)(ids, attention_mask=mask)  # noqa: B023 - jitted and run in this iteration

    fwd = jax.jit(fwd, in_shardings=(state_sh, sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 2)),
                  out_shardings=sharding.batch_sharding(mesh, 3))
    out = fwd(state, ids, mask)
    assert out.sharding.spec[0] is not None or shape[0] * shape[1] == 1, out.sharding
    # a sharded program sums in another order: logits agree to fp32 rounding of their scale on any
    # x86-64 CPU; the bound is absolute for logits of order <= 1 (this seeded model), relative beyond
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(np.asarray(out) - ref).max()) / scale
    print(f"mesh {shape}: q_proj spec {spec}, max |diff| / scale {err:.2e}")
    assert err < 1e-5, (shape, err)
    with jax.set_mesh(mesh):  # the model's own activation constraints (sharding.HIDDEN_AXES) on
      text = fwd.lower(state, ids, mask).as_text()
      out_c = fwd(state, ids, mask)
    err_c = float(np.abs(np.asarray(out_c) - ref).max()) / scale
    print(f"mesh {shape} with jax.set_mesh: {text.count('sharding_constraint')} constraints, "
          f"max |diff| / scale {err_c:.2e}")
    # the embedding's output, and every layer's: the scanned layer body (traced once) holds one
    assert text.count("sharding_constraint") >= 2, text[:2000]
    assert "stablehlo.while" in text, "the layers are not scanned"
    assert err_c < 1e-5, (shape, err_c)
  print("OK")
  return 0


if __name__ == "__main__":
  sys.exit(main())
