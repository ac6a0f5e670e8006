"""The trainers' settings, each field defined once (engage_jax/fields.py: type, default, doc, check):

  TrainConfig            the loop: optimizer, schedule, steps, batch, logging, checkpoints (SFT's defaults)
  SFTConfig(TrainConfig) config.sft: + agent_steps, simulator_steps
  DPOConfig(TrainConfig) config.dpo: DPO's own defaults + the objective and the pair lengths

A config section maps 1:1 onto its class (`DPOConfig.from_any(config.dpo)`); engage_jax/schema.py
builds the launchers' config from these classes, so a stage function called directly gets the
defaults a launcher gets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from engage_jax.fields import Bool, Int, Num, OneOf, field
from engage_jax.models.config import DTYPE_ALIASES, DTYPE_NAMES, jax_dtype

DTYPES = {n: jax_dtype(n, aliases=True) for n in (*DTYPE_NAMES, *DTYPE_ALIASES)}   # compute_dtype names
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")  # DPOConfig.loss_type (train/dpo_loss.py)


@dataclasses.dataclass
class TrainConfig:
  """Hyper-parameters of the training loop; the defaults are SFT's (config.sft).

  Steps count optimizer updates; one update consumes `batch_size * grad_accum` examples (pairs
  for DPO). `steps=0` means `num_epochs` passes over the training data.
  """
  learning_rate: float = field(3e-3, "peak learning rate (after warm-up)", Num(0.0, lo_open=True))
  min_lr_ratio: float = field(0.1, "the cosine decays to learning_rate * min_lr_ratio", Num(0.0, 1.0))
  warmup_steps: int = field(30, "linear warm-up steps", Int(0))
  steps: int = field(0, "optimizer updates (0: num_epochs passes over the data)", Int(0, " (0: num_epochs passes)"))
  num_epochs: int = field(1, "passes over the data when steps is 0", Int(1))
  batch_size: int = field(32, "examples per micro-batch (global, over the data x fsdp mesh extent)", Int(1))
  grad_accum: int = field(1, "micro-batches per optimizer update", Int(1))
  weight_decay: float = field(0.01, "AdamW weight decay", Num(0.0))
  adam_b1: float = field(0.9, "AdamW beta1", Num(0.0, 1.0, hi_open=True))
  adam_b2: float = field(0.999, "AdamW beta2", Num(0.0, 1.0, hi_open=True))
  adam_eps: float = field(1e-8, "AdamW epsilon", Num(0.0, lo_open=True))
  grad_clip: float = field(1.0, "global-norm clipping (0: off)", Num(0.0))
  compute_dtype: str = field("float32", "float32 | bfloat16 (parameters stay in their dtype)", key=False)
  max_len: int = field(256, "longest example in tokens (SFT: config.data.max_len)", Int(4))
  min_bucket: int = field(32, "shortest length bucket (each bucket is one compiled step)", Int(1))
  seed: int = field(0, "data order and init (the pipeline's config.seed)", key=False)
  log_every: int = field(50, "steps between metrics.jsonl lines", Int(1))
  eval_every: int = field(200, "steps between held-out evaluations (0: before and after training only)", Int(0))
  eval_at_start: bool = field(True, "evaluate before the first step", Bool())
  checkpoint_every: int = field(200, "steps between Orbax checkpoints (0: only at the end)",
                                Int(0, " (0: only at the end)"))
  keep_checkpoints: int = field(2, "checkpoints kept (0: all)", Int(0, " (0: keep all)"))
  progress: bool = field(True, "a tqdm progress bar", Bool())

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
class SFTConfig(TrainConfig):
  """config.sft: TrainConfig + the steps of each role. `steps`, `num_epochs` and `max_len` are not
  its keys: the pipeline passes `steps=<role>_steps` and `max_len=config.data.max_len`."""
  NOT_KEYS: ClassVar[tuple[str, ...]] = ("steps", "num_epochs", "max_len")
  agent_steps: int = field(150, "the agent's SFT steps (0: the pretrained model as it is)",
                           Int(0, " (0: the pretrained model as it is)"))
  simulator_steps: int = field(400, "the simulator's SFT steps (0: the pretrained model as it is)",
                               Int(0, " (0: the pretrained model as it is)"))


@dataclasses.dataclass
class DPOConfig(TrainConfig):
  """config.dpo: TrainConfig with DPO's own defaults + the DPO objective (`train.dpo_loss.dpo_loss`)
  and the pair lengths."""
  learning_rate: float = field(2e-3, "peak learning rate (after warm-up)", Num(0.0, lo_open=True))
  warmup_steps: int = field(10, "linear warm-up steps", Int(0))
  num_epochs: int = field(5, "passes over the pairs when steps is 0", Int(1))
  batch_size: int = field(16, "pairs per micro-batch (global, over the data x fsdp mesh extent)", Int(1))
  weight_decay: float = field(0.0, "AdamW weight decay", Num(0.0))
  log_every: int = field(20, "steps between metrics.jsonl lines", Int(1))
  eval_every: int = field(0, "steps between held-out evaluations (0: before and after; heldout_fraction > 0: "
                             "every epoch)", Int(0))
  checkpoint_every: int = field(100, "steps between Orbax checkpoints (0: only at the end)",
                                Int(0, " (0: only at the end)"))
  beta: float = field(0.1, "DPO temperature: the implicit reward's scale", Num(0.0, lo_open=True))
  loss_type: str = field("sigmoid", "sigmoid | ipo | hinge | robust", OneOf(LOSS_TYPES))
  label_smoothing: float = field(0.0, "conservative DPO / robust: assumed share of flipped labels",
                                 Num(0.0, 0.5, hi_open=True))
  rpo_alpha: float = field(1.0, "> 0: + rpo_alpha x NLL of the chosen completion (RPO), against likelihood "
                                "collapse", Num(0.0))
  max_completion_len: int = field(0, "longest completion in tokens (0: max_len // 2)", Int(0, " (0: max_len // 2)"))
  heldout_fraction: float = field(0.0, "> 0: hold out this share of the search trees' pairs, evaluated every "
                                       "epoch (held-out accuracy / implicit margin curves)", Num(0.0, 0.5))
