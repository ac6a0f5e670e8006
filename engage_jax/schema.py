"""The pipeline's config schema: one dataclass per section, each value defined once.

    c = schema.config_dict(schema.PipelineConfig())  # configs/base.py: the launchers' ConfigDict
    schema.problems(c)                                 # [(key, what)]: every field and cross-key check

Section -> its dataclass (the class a stage function takes, where there is one):
  data       DataConfig                      tokenizer  TokenizerConfig
  model      ModelSection (agent / simulator: RoleModelConfig, .lora: models.lora.LoraConfig)
  mesh       MeshConfig                      rollout    RolloutConfig
  sft        train.config.SFTConfig          dpo        train.config.DPOConfig
  search     search.run.SearchSection (SearchConfig + the runner's keys; <role>_sampling: SamplingParams)
  eval       EvalConfig (evaluate.EvalSettings + the pipeline's keys)
  reward     rewards.RewardSettings
A field's type, default, one-line doc and range check are its `fields.field(...)`; a field with
`key=False`, or named in its class's `NOT_KEYS`, is not a config key. Checks that relate several
keys are the classes' `cross_problems(cfg, key)`. Checks of files, data and devices are
engage_jax/config_check.py's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from engage_jax.data.dialogue import TASKS
from engage_jax.data.sandbox import WORLDS
from engage_jax.evaluate import EvalSettings
from engage_jax.fields import Bool, Check, Int, Num, OneOf, Str, field, is_int
from engage_jax.models.config import DTYPE_NAMES, SUPPORTED_MODEL_TYPES
from engage_jax.models.lora import LoraConfig
from engage_jax.rewards import RewardSettings
from engage_jax.rollout import Speaker
from engage_jax.sampling import SamplingParams
from engage_jax.search.run import SearchSection
from engage_jax.tokenizer import SPECIAL_TOKENS
from engage_jax.train.config import DPOConfig, SFTConfig

SOURCES = {"sandbox": None, "esconv": "es", "p4g": "p4g"}   # data.source -> the task it needs
ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = field("sandbox", "sandbox | esconv | p4g", OneOf(SOURCES))
  path: str = field("", "the real data's directory (esconv/ or p4g/ files), e.g. ../shared/data/esconv",
                    Str("must be a string"))
  sandbox_train: int = field(1500, "sandbox dialogues for SFT", Int(1))
  sandbox_valid: int = field(150, "sandbox dialogues for the SFT held-out loss", Int(0))
  sandbox_world: str = field("default", "default | delayed (the delayed-effect worlds, engage_jax/data/sandbox.py)",
                             OneOf(WORLDS))
  max_len: int = field(256, "SFT example length in tokens (a longer chat becomes overlapping windows)", Int(8))
  skip_bad: bool = field(False, "skip malformed records (reported) instead of failing", Bool())
  max_train_dialogues: int = field(0, "training dialogues kept (0: all)", Int(0, " (0: all)"))
  max_valid_dialogues: int = field(0, "validation dialogues kept for the SFT held-out loss (0: all)",
                                   Int(0, " (0: all)"))
  condition_keys: str = field("", "comma-separated condition keys kept (empty: all), e.g. a P4G persona's",
                              Str("must be a comma-separated string"))

  @staticmethod
  def cross_problems(cfg, key: str) -> list[tuple[str, str]]:
    src, task = cfg.data.source, cfg.task   # source has passed its check (one of SOURCES)
    if SOURCES[src] not in (None, task) and task in TASKS:
      return [(f"{key}.source", f"{src!r} needs config.task={SOURCES[src]!r}; got task={task!r}")]
    if SOURCES[src] and not cfg.data.path:
      return [(f"{key}.path", f"is required for data.source={src!r}; got ''")]
    return []


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  path: str = field("", "an HF tokenizer dir or .gguf file (empty: train a byte-level BPE on the corpus)",
                    Str("must be a string (empty: train a BPE)"))
  vocab_size: int = field(1024, "the trained BPE's vocabulary (without a path)", Int(1))

  @staticmethod
  def cross_problems(cfg, key: str) -> list[tuple[str, str]]:
    least = 257 + len(SPECIAL_TOKENS)
    if not cfg.tokenizer.path and cfg.tokenizer.vocab_size < least:
      return [(f"{key}.vocab_size", f"must be an integer >= {least} (bytes + special tokens + merges); "
                                    f"got {cfg.tokenizer.vocab_size}")]
    return []


@dataclasses.dataclass(frozen=True)
class RoleModelConfig:
  """One role's model: pretrained from `path`, or from scratch with the fields below."""
  path: str = field("", "an HF model dir or .gguf file (empty: from scratch, with the fields below)",
                    Str("must be a string (empty: from scratch)"))
  model_type: str = field("llama", "llama | mistral | qwen2", OneOf(SUPPORTED_MODEL_TYPES))
  hidden_size: int = field(128, "width", Int(1))
  intermediate_size: int = field(352, "MLP width", Int(1))
  num_hidden_layers: int = field(2, "decoder layers", Int(1))
  num_attention_heads: int = field(4, "query heads", Int(1))
  num_key_value_heads: int = field(2, "key / value heads (grouped-query attention)", Int(1))
  max_position_embeddings: int = field(512, "longest sequence", Int(1))
  tie_word_embeddings: bool = field(True, "the output head shares the embedding", Bool())
  rope_theta: float = field(10000.0, "RoPE base", Num(0.0, lo_open=True))
  lora: LoraConfig = field(doc="LoRA adapters (rank 0: full fine-tuning)", factory=LoraConfig)

  @staticmethod
  def cross_problems(cfg, key: str) -> list[tuple[str, str]]:
    node, out = cfg_node(cfg, key), []   # its own fields have passed their checks
    if node.lora.rank == 0 and node.lora.path:
      out.append((f"{key}.lora.rank", "must be > 0 (the adapter's r) when lora.path is set; got 0"))
    if node.path:
      return out
    out += [(f"{key}.{k}", what) for k, what in dims_problems({f: node[f] for f in ARCH_KEYS})]
    max_len = cfg.data.get("max_len")
    if is_int(max_len) and max_len > node.max_position_embeddings:
      out.append((f"{key}.max_position_embeddings",
                  f"must be >= data.max_len={max_len}; got {node.max_position_embeddings}"))
    return out


def dims_problems(d: dict, where: str = "") -> list[tuple[str, str]]:
  """[(field, what)] of a model's sizes `d` (ARCH_KEYS, head_dim optional): heads divide hidden,
  kv heads divide heads, even head_dim. where: " (in <file>)" for a config.json's."""
  h, n = d.get("hidden_size"), d.get("num_attention_heads")
  kv = d.get("num_key_value_heads") or n
  if not is_int(kv) or kv < 1:
    return [("num_key_value_heads", f"must be a positive integer{where}; got {kv!r}")]
  if not (is_int(h) and is_int(n) and h >= 1 and n >= 1):
    return []
  out = []
  if n % kv:
    out.append(("num_key_value_heads", f"{kv} must divide num_attention_heads={n}{where}"))
  head_dim = d.get("head_dim") or (h // n if h % n == 0 else None)
  if head_dim is None:
    out.append(("num_attention_heads", f"{n} must divide hidden_size={h}{where}"))
  elif head_dim % 2:
    out.append(("num_attention_heads", f"head_dim {head_dim} must be even (RoPE){where}"))
  return out


@dataclasses.dataclass(frozen=True)
class ModelSection:
  dtype: str = field("float32", "compute dtype: float32 | bfloat16", OneOf(DTYPE_NAMES))
  param_dtype: str = field("float32", "parameter dtype: float32 | bfloat16", OneOf(DTYPE_NAMES))
  remat: bool = field(False, "recompute layer activations in the backward pass (big models)", Bool())
  scan_layers: bool = field(True, "one lax.scan over the layers (False: unrolled; compile grows with depth)", Bool())
  agent: RoleModelConfig = field(doc="the agent's model", factory=RoleModelConfig)
  simulator: RoleModelConfig = field(doc="the user simulator's model", factory=RoleModelConfig)


class _MeshAxis(Check):
  what = "must be >= 1 or -1 (the rest)"

  def __call__(self, v) -> bool:
    return is_int(v) and (v >= 1 or v == -1)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh axes (engage_jax/sharding.py); -1: the devices left over."""
  data: int = field(-1, "data-parallel axis", _MeshAxis())
  fsdp: int = field(1, "parameter-sharded data-parallel axis", _MeshAxis())
  tensor: int = field(1, "tensor-parallel axis", _MeshAxis())


@dataclasses.dataclass(frozen=True)
class EvalConfig(EvalSettings):
  """config.eval: EvalSettings + the held-out conditions, the speakers' settings, the held-out simulator."""
  n_conditions: int = field(250, "held-out conditions", Int(1))
  heldout_simulator: bool = field(False, "also evaluate against a simulator the search never saw (SFT on the odd "
                                         "half of the training dialogues)", Bool())
  agent_sampling: SamplingParams = field(
      doc="the agent's replies", factory=lambda: SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9))
  simulator_sampling: SamplingParams = field(
      doc="the simulator's replies", factory=lambda: SamplingParams(max_new_tokens=32, temperature=1.0))
  max_prompt_len: int = field(Speaker.max_prompt_len, "prompt tokens kept (a longer chat drops its oldest "
                              "messages and is prefilled afresh)", Int(1))


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  kv_cache: bool = field(Speaker.kv_cache, "search and eval speakers keep each chat's KV cache between turns "
                               "(engage_jax/chat_cache.py; False: every turn prefills from token 0)", Bool())


def _sft_needs_a_model(cfg, key: str) -> list[tuple[str, str]]:
  out = []
  for role in ("agent", "simulator"):
    if cfg.sft.get(f"{role}_steps") == 0 and not cfg.model[role].get("path"):
      out.append((f"{key}.{role}_steps", f"0 (no SFT) needs a pretrained config.model.{role}.path; got 0"))
  return out


def _readout_needs_p4g(cfg, key: str) -> list[tuple[str, str]]:
  if cfg.reward.get("readout") == "expected" and cfg.task == "es":
    return [(f"{key}.readout", "'expected' needs task p4g (ES keeps its regex); got task 'es'")]
  return []


# the cross-key checks of the library's classes (their modules do not import this one)
CROSS_PROBLEMS = {SFTConfig: _sft_needs_a_model, RewardSettings: _readout_needs_p4g}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  name: str = field("base", "the config's name", Str())
  task: str = field("es", "es | p4g", OneOf(TASKS))
  seed: int = field(0, "every seed derives from it", Int(0))
  search_dpo_rounds: int = field(1, "rounds of search -> DPO; round r > 1 searches with round r - 1's DPO agent "
                                    "(rounds/round-r/)", Int(1))
  data: DataConfig = field(doc="the dialogues", factory=DataConfig)
  tokenizer: TokenizerConfig = field(doc="the tokenizer", factory=TokenizerConfig)
  model: ModelSection = field(doc="the agent's and the simulator's models", factory=ModelSection)
  mesh: MeshConfig = field(doc="the device mesh", factory=MeshConfig)
  sft: SFTConfig = field(doc="supervised fine-tuning of both roles", factory=SFTConfig)
  dpo: DPOConfig = field(doc="DPO of the agent on the search's pairs", factory=DPOConfig)
  search: SearchSection = field(doc="i×MCTS over simulated chats", factory=SearchSection)
  eval: EvalConfig = field(doc="the evaluation on held-out conditions", factory=EvalConfig)
  rollout: RolloutConfig = field(doc="conversation rollouts", factory=RolloutConfig)
  reward: RewardSettings = field(doc="the user's reaction as a reward", factory=RewardSettings)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """config.experiment: the ablation grids' own section (engage_jax/experiments/runner.py; only in
  configs/experiments/*.py, the pipeline runs without it)."""
  variants: str = field("sft,future,turn,corpus_mix,rft,best_of_n", "comma-separated variants (--variants "
                                                                     "overrides; experiments/variants.py)", Str())
  seeds: str = field("0,1,2", "comma-separated seeds (--seeds overrides)", Str())
  ensemble_size: int = field(2, "simulators: the search's own + (ensemble_size - 1) held out", Int(1))
  oracle: bool = field(True, "evaluate every agent against the sandbox world as well", Bool())
  best_of_n: int = field(2, "candidates per turn of the best_of_n variant", Int(1))
  corpus_pairs: int = field(0, "corpus pairs of corpus_mix (0: as many as the search's pairs)", Int(0))
  rft_steps: int = field(50, "SFT steps of the rft variant", Int(1))
  rft_learning_rate: float = field(1e-3, "the rft variant's learning rate", Num(0.0, lo_open=True))
  rft_min_value: float = field(0.5, "chosen turns with at least this search value are RFT data", Num(0.0))
  transfer_from: str = field("", "the other task's experiment dir (the transfer variant reads its pairs)", Str())


OPTIONAL_SECTIONS = {"experiment": ExperimentConfig}   # sections a config may add to PipelineConfig's


# ------------------------------------------------------------------------------ walking the schema
def key_fields(obj_or_cls) -> list[dataclasses.Field]:
  """The fields of a dataclass that are config keys (not `key=False`, not in `NOT_KEYS`)."""
  skip = set(getattr(obj_or_cls, "NOT_KEYS", ()))
  return [f for f in dataclasses.fields(obj_or_cls) if f.metadata.get("key", True) and f.name not in skip]


def config_dict(obj: Any) -> ml_collections.ConfigDict:
  """The ConfigDict of a dataclass instance: its key fields, nested dataclasses as sub-dicts,
  values `encode`d where their field says so."""
  out = {}
  for f in key_fields(obj):
    v = getattr(obj, f.name)
    if dataclasses.is_dataclass(v):
      v = config_dict(v)
    elif f.metadata.get("encode"):
      v = f.metadata["encode"](v)
    out[f.name] = v
  return ml_collections.ConfigDict(out)


def defaults() -> ml_collections.ConfigDict:
  """The launchers' config with every default (configs/base.py's `get_config`)."""
  return config_dict(PipelineConfig())


def cfg_node(cfg, key: str):
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


def _section_problems(node, obj, key: str, root) -> list[tuple[str, str]]:
  out = []
  fields = key_fields(obj)
  names = [f.name for f in fields]
  for f in fields:
    k = f"{key}.{f.name}" if key else f.name
    if f.name not in node:
      out.append((k, "missing from the config"))
      continue
    v, default = node[f.name], getattr(obj, f.name)
    if dataclasses.is_dataclass(default):
      if not hasattr(v, "keys"):
        out.append((k, f"must be a section with the keys {', '.join(f.name for f in key_fields(default))}; "
                       f"got {v!r}"))
      else:
        out += _section_problems(v, default, k, root)
      continue
    check = f.metadata.get("check")
    try:
      good = check is None or check(v)
    except (TypeError, ValueError):
      good = False
    if not good:
      out.append((k, f"{check.what}; got {v!r}"))
  kind = getattr(obj, "KEY_KIND", "")
  for extra in sorted(set(node.keys()) - set(names)):
    out.append((f"{key}.{extra}" if key else extra,
                f"unknown {kind + ' ' if kind else ''}key; the keys are {', '.join(names)}"))
  if not out:
    cross = getattr(obj, "cross_problems", None) or CROSS_PROBLEMS.get(type(obj))
    if cross is not None:
      out += cross(root, key)
  return out


def problems(cfg) -> list[tuple[str, str]]:
  """[(dotted key, what is wrong)] of every key of `cfg` (a ConfigDict or mapping of the
  PipelineConfig schema): missing and unknown keys, failed field checks, then each section's
  cross-key checks where its own fields passed."""
  if not isinstance(cfg, ml_collections.ConfigDict):
    cfg = ml_collections.ConfigDict(cfg)
  extra = {k: cls for k, cls in OPTIONAL_SECTIONS.items() if k in cfg}
  main = {k: v for k, v in cfg.items() if k not in extra}
  out = _section_problems(main, PipelineConfig(), "", cfg)
  for k, cls in extra.items():
    out += _section_problems(cfg[k], cls(), k, cfg)
  return out


def describe(obj: Any = None, prefix: str = "") -> list[str]:
  """`key = default  # doc` for every config key (nested sections dotted)."""
  obj = PipelineConfig() if obj is None else obj
  out = []
  for f in key_fields(obj):
    v, key = getattr(obj, f.name), f"{prefix}{f.name}"
    if dataclasses.is_dataclass(v):
      out += describe(v, key + ".")
    else:
      enc = f.metadata.get("encode")
      out.append(f"{key} = {(enc(v) if enc else v)!r}  # {f.metadata.get('doc', '')}")
  return out


if __name__ == "__main__":
  print("\n".join(describe()))
