"""engage_jax: aligning dialogue LLMs for user engagement with JAX/Flax NNX."""
__version__ = "0.1.0"
