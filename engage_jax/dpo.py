"""Public DPO API (docs/CONTRACTS.md): `from engage_jax import dpo; dpo.dpo_loss(...)`."""
from engage_jax.train.dpo import (LOSS_TYPES, dpo_loss, load_pairs, sequence_logps, tokenize_pairs,
                                  train_dpo)

__all__ = ["LOSS_TYPES", "dpo_loss", "load_pairs", "sequence_logps", "tokenize_pairs", "train_dpo"]
