"""Public DPO API (docs/CONTRACTS.md): `from engage_jax import dpo; dpo.dpo_loss(...)`."""
from engage_jax.train.config import DPOConfig
from engage_jax.train.dpo import train_dpo
from engage_jax.train.dpo_loss import LOSS_TYPES, dpo_loss, sequence_logps
from engage_jax.train.pair_data import read_pair_files, tokenize_pairs

__all__ = ["DPOConfig", "LOSS_TYPES", "dpo_loss", "read_pair_files", "sequence_logps", "tokenize_pairs", "train_dpo"]
