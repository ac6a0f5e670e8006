"""train.config: TrainConfig / DPOConfig fields are the config files' keys (1:1, unknown keys an
error), and every config's sft / dpo section becomes one through build.train_config."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engage_jax import build
from engage_jax.train.config import DPOConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in [*REPO.glob("configs/*.py"), *REPO.glob("configs/experiments/*.py")]
                 if "def get_config" in p.read_text())


def _config(path: Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_unknown_key_is_an_error():
  with pytest.raises(ValueError, match=r"unknown keys \['num_steps'\]"):
    TrainConfig.from_any({"num_steps": 3})
  with pytest.raises(ValueError, match="unknown keys"):
    TrainConfig.from_any({"beta": 0.1})       # a DPO field is not the loop's


def test_dpo_config_extends_train_config():
  d = DPOConfig.from_any({"steps": 4, "beta": 0.2, "grad_clip": 0.5})
  assert isinstance(d, TrainConfig) and (d.steps, d.beta, d.grad_clip) == (4, 0.2, 0.5)
  t = TrainConfig.from_any(d)                 # the loop's fields of a DPOConfig
  assert type(t) is TrainConfig and (t.steps, t.grad_clip) == (4, 0.5)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_section_maps_one_to_one(path):
  cfg = _config(path)
  sft = build.train_config(cfg, cfg.sft, steps=int(cfg.sft.agent_steps))
  dpo = build.train_config(cfg, cfg.dpo)
  assert type(sft) is TrainConfig and type(dpo) is DPOConfig
  for section, out in ((cfg.sft, sft), (cfg.dpo, dpo)):
    for key, value in section.items():
      if key not in ("agent_steps", "simulator_steps"):
        assert getattr(out, key) == value, key
  assert sft.steps == cfg.sft.agent_steps and sft.compute_dtype == dpo.compute_dtype == cfg.model.dtype
