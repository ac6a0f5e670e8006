"""The one dtype map (models.config.jax_dtype): the names a config may give and what they become."""
import jax.numpy as jnp
import pytest

from engage_jax.models.config import DTYPE_ALIASES, DTYPE_NAMES, jax_dtype
from engage_jax.train.config import DTYPES


def test_names_and_values():
  assert DTYPE_NAMES == ("float32", "bfloat16")
  assert jax_dtype("float32") is jnp.float32 and jax_dtype("bfloat16") is jnp.bfloat16


def test_aliases_only_where_asked():
  assert DTYPE_ALIASES == {"fp32": "float32", "bf16": "bfloat16"}
  assert jax_dtype("bf16", aliases=True) is jnp.bfloat16 and jax_dtype("fp32", aliases=True) is jnp.float32
  for bad in ("bf16", "float16", "int8"):
    with pytest.raises(KeyError):
      jax_dtype(bad)


def test_trainer_compute_dtypes_unchanged():
  assert DTYPES == {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "fp32": jnp.float32, "bf16": jnp.bfloat16}
  assert all(DTYPES[k] is v for k, v in
             {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "fp32": jnp.float32, "bf16": jnp.bfloat16}.items())
