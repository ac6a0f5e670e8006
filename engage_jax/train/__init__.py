"""Training: one jit loop (`loop`) shared by SFT (`sft.train_sft`) and DPO (`dpo.train_dpo`);
settings in `config` (TrainConfig, DPOConfig); DPO's pieces in `pair_data`, `reference` and
`dpo_loss` (the public DPO API is `engage_jax.dpo`)."""
from engage_jax.train.config import DPOConfig, TrainConfig
from engage_jax.train.loop import NonFiniteLossError, read_metrics

__all__ = ["NonFiniteLossError", "TrainConfig", "DPOConfig", "read_metrics", "train_sft", "train_dpo"]


def __getattr__(name):  # lazy: importing the package stays light
  if name == "train_sft":
    from engage_jax.train.sft import train_sft  # noqa: PLC0415 (lazy package attribute: importing engage_jax.train stays light)
    return train_sft
  if name == "train_dpo":
    from engage_jax.train.dpo import train_dpo  # noqa: PLC0415 (lazy package attribute: importing engage_jax.train stays light)
    return train_dpo
  raise AttributeError(name)
