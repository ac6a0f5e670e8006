"""Smoke run of the whole pipeline on the real pretrained checkpoint (configs/esconv_smollm2.py, real
ESConv data, SmolLM2-135M-Instruct's own tokenizer from the GGUF) at a tiny size: every stage runs,
the report is well formed, and the texts went through the real chat template and stop token; and
DPO's pair tokenization + one step with that tokenizer (the tiny search rarely finds ES pairs).

The models are SmolLM2's first 2 of its 30 layers (the real weights, converted with
`models.convert_gguf`), so CI compiles 2-layer programs instead of 30-layer ones; the full model is
checked against transformers in tests/models/test_smollm2.py and runs in the documented configs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Tolerances: at DPO step 0 policy == reference: the loss is log 2 up to the rounding of
# beta x (difference of two programs' sums of fp32 log-probs), ~1e-5 of that scale on any CPU; 1e-3.

TINY = [
    "--config.data.max_train_dialogues=8", "--config.data.max_valid_dialogues=1", "--config.data.max_len=128",
    "--config.sft.agent_steps=1", "--config.sft.simulator_steps=1", "--config.sft.batch_size=2",
    "--config.sft.min_bucket=128", "--config.sft.warmup_steps=0",
    "--config.search.n_conditions=2", "--config.search.trees_per_shard=2", "--config.search.k=2",
    "--config.search.budget=1", "--config.search.max_depth=1", "--config.search.max_turns=2",
    "--config.search.margin=0.01", "--config.search.agent_sampling.max_new_tokens=12",
    "--config.search.simulator_sampling.max_new_tokens=12",
    "--config.search.max_prompt_len=128",
    "--config.eval.n_conditions=2", "--config.eval.max_agent_turns=2",
    "--config.eval.agent_sampling.max_new_tokens=12", "--config.eval.simulator_sampling.max_new_tokens=12",
    "--config.eval.max_prompt_len=128", "--config.eval.heldout_simulator=false",  # tested on the sandbox
    "--config.dpo.max_len=128", "--config.dpo.min_bucket=128", "--config.dpo.batch_size=2",
    "--config.dpo.warmup_steps=0",
]


def truncated_smollm2(out_dir, layers: int = 2):
  """SmolLM2-135M-Instruct's first `layers` decoder layers (+ embeddings, final norm) as an HF dir."""
  from safetensors.numpy import load_file, save_file
  from engage_jax import models
  from engage_jax.models.gguf import smollm2_135m_instruct
  full = models.convert_gguf(smollm2_135m_instruct(), out_dir / "full")
  tensors = load_file(str(full / "model.safetensors"))
  keep = {k: v for k, v in tensors.items()
          if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
  out = out_dir / f"smollm2_{layers}l"
  out.mkdir()
  save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
  cfg = json.loads((full / "config.json").read_text())
  (out / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=layers)))
  return out


@pytest.mark.slow
@pytest.mark.data
def test_real_model_pipeline_every_stage(data_dir, tmp_path):
  from engage_jax.models.gguf import smollm2_135m_instruct
  model_dir = truncated_smollm2(tmp_path)
  wd = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "launch/pipeline.py", "--config=configs/esconv_smollm2.py", f"--workdir={wd}",
       f"--config.data.path={data_dir / 'esconv'}", f"--config.tokenizer.path={smollm2_135m_instruct()}",
       f"--config.model.agent.path={model_dir}", f"--config.model.simulator.path={model_dir}", *TINY],
      cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                   "ENGAGE_HEARTBEAT_S": "30"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  stages = json.loads((wd / "stages.json").read_text())
  for s in ("tokenizer", "sft_agent", "sft_simulator", "eval_sft", "search", "dpo", "eval_dpo", "report"):
    assert stages[s]["done"], s
  report = json.loads((wd / "report.json").read_text())
  assert report["task"] == "es" and report["sft"]["n"] == report["dpo"]["n"] == 2
  tok = json.loads((wd / "tokenizer" / "tokenizer_config.json").read_text())
  assert tok["eos_token"] == "<|im_end|>"
  dialogues = [json.loads(line) for line in (wd / "eval_sft" / "dialogues.jsonl").read_text().splitlines()]
  assert len(dialogues) == 2
  for d in dialogues:
    texts = [t["text"] for t in d["turns"]]
    assert not any("<|im_end|>" in t or "<|im_start|>" in t for t in texts)  # cut at the stop token
    assert d["turns"][-1]["role"] == "user" and 1 <= d["outcome"]["num_turns"] <= 2
  assert (wd / "sft_agent" / "tb").is_dir() and any((wd / "sft_agent" / "tb").iterdir())


@pytest.fixture(scope="module")
def small_real(tmp_path_factory):
  from engage_jax.models.gguf import smollm2_135m_instruct
  from engage_jax.tokenizer import ChatTokenizer
  return truncated_smollm2(tmp_path_factory.mktemp("smol")), ChatTokenizer.load(smollm2_135m_instruct())


def test_dpo_pairs_and_a_step_with_the_real_tokenizer(small_real, tmp_path):
  """Chosen/rejected token spans are exactly the completions + <|im_end|>; one DPO step runs."""
  import numpy as np
  from engage_jax import models
  from engage_jax.train import dpo, pair_data
  model_dir, tok = small_real
  prompt = [{"role": "system", "content": "You are a supporter."}, {"role": "user", "content": "I feel alone."}]
  pairs = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "That sounds hard. I'm here."}],
            "rejected": [{"role": "assistant", "content": "Ok."}]},
           {"prompt": prompt[:1] + [{"role": "user", "content": "Work is 100% too much."}],
            "chosen": [{"role": "assistant", "content": "What part weighs most?"}],
            "rejected": [{"role": "assistant", "content": "Just quit, 2 easy."}]}]
  buckets = pair_data.tokenize_pairs(pairs, tok, max_len=64)
  seen = {}
  for arr in buckets.values():
    for j, i in enumerate(arr["pair_index"]):
      for side in ("chosen", "rejected"):
        ids = arr[f"{side}_ids"][j][arr[f"{side}_mask"][j] == 1]
        seen[(int(i), side)] = tok.hf.decode(ids.tolist(), skip_special_tokens=False)
  for i, p in enumerate(pairs):
    for side in ("chosen", "rejected"):
      assert seen[(i, side)] == p[side][0]["content"] + "<|im_end|>"
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
  policy, ref = models.from_pretrained(model_dir), models.from_pretrained(model_dir)
  cfg = dict(beta=0.1, rpo_alpha=0.0, max_len=64, min_bucket=64, batch_size=2, steps=1, learning_rate=1e-5, warmup_steps=0,
             checkpoint_every=0, log_every=1, progress=False)
  _, summary = dpo.train_dpo(policy, ref, [str(path)], tok, cfg, str(tmp_path / "dpo"))
  m = summary["last_train"]
  assert np.isfinite(m["loss"]) and abs(m["loss"] - np.log(2)) < 1e-3  # policy == reference at step 0
