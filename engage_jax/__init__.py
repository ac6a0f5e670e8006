"""engage_jax: aligning dialogue LLMs for user engagement with JAX/Flax NNX."""
import logging

__version__ = "0.1.0"
# `datasets` logs "JAX version ... available" at INFO when imported (its logger inherits absl's
# root level in the launchers): keep its import quiet, as the launchers' one-line errors expect
logging.getLogger("datasets").setLevel(logging.WARNING)
