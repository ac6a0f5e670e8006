"""Training: one jit loop (`loop`) shared by SFT (`sft.train_sft`) and DPO (`dpo.train_dpo`)."""
from engage_jax.train.loop import NonFiniteLossError, TrainConfig, read_metrics

__all__ = ["NonFiniteLossError", "TrainConfig", "read_metrics", "train_sft", "train_dpo", "dpo_loss"]


def __getattr__(name):  # lazy: importing the package stays light
  if name == "train_sft":
    from engage_jax.train.sft import train_sft
    return train_sft
  if name in ("train_dpo", "dpo_loss"):
    from engage_jax.train import dpo
    return getattr(dpo, name)
  raise AttributeError(name)
