"""The trainers' settings: `TrainConfig` (the loop: optimizer, schedule, steps, batch, logging,
checkpoints) and `DPOConfig(TrainConfig)` (+ the DPO objective and pair lengths).

Fields are named as the config files name them (configs/base.py `sft` / `dpo` sections), so a
section maps 1:1 onto a config: `DPOConfig.from_any(config.dpo)`. The pipeline's own keys
(`sft.agent_steps`, `sft.simulator_steps`) are not fields; it passes them as `steps=`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from engage_jax.models.config import DTYPE_ALIASES, DTYPE_NAMES, jax_dtype

DTYPES = {n: jax_dtype(n, aliases=True) for n in (*DTYPE_NAMES, *DTYPE_ALIASES)}   # compute_dtype names
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")  # DPOConfig.loss_type (train/dpo_loss.py)


@dataclasses.dataclass
class TrainConfig:
  """Hyper-parameters of the training loop (SFT and DPO).

  Steps count optimizer updates; one update consumes `batch_size * grad_accum` examples (pairs
  for DPO). `steps=0` means `num_epochs` passes over the training data.
  """
  learning_rate: float = 3e-4
  min_lr_ratio: float = 0.1          # cosine decays to learning_rate * min_lr_ratio
  warmup_steps: int = 10
  steps: int = 0
  num_epochs: int = 1
  batch_size: int = 8                # per micro-batch (global, over the data×fsdp mesh extent)
  grad_accum: int = 1                # micro-batches per optimizer update
  weight_decay: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  grad_clip: float = 1.0             # global-norm clipping; <= 0 disables it
  compute_dtype: str = "float32"     # "float32" | "bfloat16" (parameters stay in their dtype)
  max_len: int = 512
  min_bucket: int = 32
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0                # 0: evaluate only before and after training
  eval_at_start: bool = True
  checkpoint_every: int = 100        # 0: save only at the end
  keep_checkpoints: int = 3
  progress: bool = True              # tqdm bar

  @classmethod
  def from_any(cls, cfg: Any = None, **overrides):
    """From a TrainConfig (a DPOConfig given to `TrainConfig.from_any` keeps the loop's fields), a
    dict or an ml_collections ConfigDict. A key that is not a field is a ValueError."""
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(cfg, TrainConfig):
      base = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
    elif cfg is None:
      base = {}
    else:
      base = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    base.update(overrides)
    unknown = sorted(set(base) - set(names))
    if unknown:
      raise ValueError(f"{cls.__name__}: unknown keys {unknown}; fields are {names}")
    out = cls(**base)
    if out.compute_dtype not in DTYPES:
      raise ValueError(f"compute_dtype {out.compute_dtype!r}: expected one of {sorted(DTYPES)}")
    if out.batch_size <= 0 or out.grad_accum <= 0:
      raise ValueError(f"batch_size ({out.batch_size}) and grad_accum ({out.grad_accum}) must be positive")
    return out


@dataclasses.dataclass
class DPOConfig(TrainConfig):
  """TrainConfig + the DPO objective (`train.dpo_loss.dpo_loss`) and the pair lengths."""
  beta: float = 0.1
  loss_type: str = "sigmoid"         # sigmoid | ipo | hinge | robust
  label_smoothing: float = 0.0
  rpo_alpha: float = 0.0             # > 0: + rpo_alpha × NLL of the chosen completion (TRL's RPO)
  max_completion_len: int = 0        # 0: max_len // 2
  heldout_fraction: float = 0.0      # > 0: hold out this share of the search trees' pairs (pair_data.split_heldout),
                                     # evaluated every epoch (held-out accuracy / implicit margin curves)
