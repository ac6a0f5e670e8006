"""engage_jax.memory_plan and launch/plan.py: analytic parameter counts, the plan's train step is the
trainer's (same lowered program), and a subprocess run on a tiny config override."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engage_jax import memory_plan
from engage_jax.models import ModelConfig
from tests.numerics import subprocess_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "launch"))
import plan  # noqa: E402

LLAMA3_8B = ModelConfig(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        tie_word_embeddings=False)
TINY = ["--config.model.agent.path=", "--config.model.agent.hidden_size=64",
        "--config.model.agent.intermediate_size=128", "--config.model.agent.num_hidden_layers=3",
        "--config.model.agent.num_attention_heads=4", "--config.model.agent.num_key_value_heads=2",
        "--config.tokenizer.vocab_size=256", "--config.mesh.fsdp=4", "--config.sft.batch_size=8",
        "--config.data.max_len=32", "--config.search.max_prompt_len=32",
        "--config.search.agent_sampling.max_new_tokens=16"]


def _load_config(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_llama3_8b_param_count():
  n = LLAMA3_8B.num_params
  assert n == 8_030_261_248
  assert abs(n - 8.03e9) / 8.03e9 < 1e-3


@pytest.mark.parametrize("name, expected", [("esconv_llama3_8b", 8_030_261_248), ("p4g_qwen2_7b", 7_615_616_512)])
def test_config_models_resolve_to_known_sizes(name, expected):
  cfg = _load_config(name)
  mc, source = memory_plan.resolve_model_config(cfg, "agent")
  assert mc.num_params == expected and "config fields" in source
  assert plan.mesh_sizes(cfg) == (1, 16, 1)
  base = _load_config("base")
  assert sorted(cfg.keys()) == sorted(base.keys())
  for section in base.keys():
    if hasattr(base[section], "keys"):
      assert sorted(cfg[section].keys()) == sorted(base[section].keys()), section


def test_analytic_terms():
  a = memory_plan.activation_bytes(LLAMA3_8B, 2, 1024, 2, remat=False)
  r = memory_plan.activation_bytes(LLAMA3_8B, 2, 1024, 2, remat=True)
  assert r["total"] < a["total"] and r["logits"] == a["logits"] == 2 * 1024 * 128256 * 12
  assert memory_plan.fsdp_transient_bytes(LLAMA3_8B, 1, 1, 4) == 0
  assert memory_plan.fsdp_transient_bytes(LLAMA3_8B, 16, 1, 4) == 2 * 128256 * 4096 * 4


def _tiny_base(**sft):
  cfg = _load_config("base")
  for k, v in dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2).items():
    cfg.model.agent[k] = v
  cfg.tokenizer.vocab_size = 64
  cfg.data.max_len = 16
  cfg.sft.update(dict(batch_size=2, agent_steps=2, log_every=1, eval_every=0, checkpoint_every=0), **sft)
  return cfg


@pytest.mark.parametrize("remat, grad_accum", [(False, 1), (True, 2)])
def test_plan_lowers_the_trainers_train_step(tmp_path, monkeypatch, remat, grad_accum):
  """The plan's train step and the one train_sft runs (recorded on its first call, with the very
  argument shapes, dtypes and shardings it was called with) lower to the same program."""
  import types

  import jax
  import jax.numpy as jnp
  import numpy as np

  from engage_jax import build, sharding as shd
  from engage_jax.train import loop, sft as sft_train

  cfg = _tiny_base(grad_accum=grad_accum)
  cfg.model.remat = remat
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  mc, _ = memory_plan.resolve_model_config(cfg, "agent")
  prog = memory_plan.train_program(cfg, mc, mesh, train_batch=2, seq_len=16, remat=remat,
                                   dtype=jnp.dtype(cfg.model.dtype), param_dtype=jnp.dtype(cfg.model.param_dtype))

  recorded = {}
  make_step = loop.make_train_step

  def recording_make_train_step(*a, **k):
    step = make_step(*a, **k)

    def run_step(*args):
      recorded.setdefault("step", step)
      recorded.setdefault("args", jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args))
      return step(*args)
    return run_step

  monkeypatch.setattr(loop, "make_train_step", recording_make_train_step)
  tok = types.SimpleNamespace(vocab_size=64, bos_id=1, eos_id=2, pad_id=0)
  model = build.new_model(cfg, "agent", tok)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 64, (8, 16)).astype(np.int32)
  data = {16: {"input_ids": ids, "loss_mask": np.ones_like(ids), "attention_mask": np.ones_like(ids)}}
  tcfg = build.train_config(cfg, cfg.sft, steps=cfg.sft.agent_steps, max_len=cfg.data.max_len, progress=False)
  sft_train.train_sft(model, data, tcfg, str(tmp_path / "sft"), mesh=mesh)
  trainer = recorded["step"].lower(*recorded["args"]).as_text()
  assert jax.tree.map(lambda x: (x.shape, x.dtype), recorded["args"]) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), prog.args)
  assert prog.lower().as_text() == trainer


def test_plan_lowers_the_samplers_own_cores(tmp_path, monkeypatch):
  """The plan's sampling programs and the ones the search's speakers run (a model loaded as
  build.load_model loads it; sampling.generate, then a conversation-cache turn that keeps a
  prefix), recorded on their calls with the very arguments, lower to the same programs."""
  import types

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from engage_jax import build, chat_cache, models, sampling

  cfg = _tiny_base()
  cfg.model.update(dtype="bfloat16", param_dtype="float32", remat=True)   # as configs/esconv_llama3_8b.py
  remat = True
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  tok = types.SimpleNamespace(vocab_size=64, bos_id=1, eos_id=2, pad_id=0)
  models.save_pretrained(build.new_model(cfg, "agent", tok), tmp_path / "hf")
  model = build.load_model(cfg, tmp_path / "hf")
  mc, _ = memory_plan.resolve_model_config(cfg, "agent")
  sp = sampling.SamplingParams(max_new_tokens=5, temperature=0.9, top_p=0.9, stop_token_ids=(2,))

  recorded = {}

  class Recorded(Exception):
    pass

  def recording(module, name):
    """module._compiled's functions record their call's function and arguments, then stop it."""
    compiled = module._compiled

    def wrapper(*a, **k):
      fn = compiled(*a, **k)

      def call(*args):
        if name not in recorded:
          recorded[name] = (fn, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args))
          raise Recorded
        return fn(*args)
      return call
    monkeypatch.setattr(module, "_compiled", wrapper)

  recording(sampling, "generate")
  prompts = [[3 + i] * (4 + 3 * i) for i in range(5)]                         # 5 distinct, longest 16
  with pytest.raises(Recorded):
    sampling.generate(model, prompts, **sp.kwargs())
  store = chat_cache.ConversationCache()
  first = store.generate(model, prompts[:2], **sp.kwargs())
  recording(chat_cache, "chat")
  other = 7 if first[0][:1] != [7] else 8                                      # not the stored row's next token
  with pytest.raises(Recorded):                                                # kept 4, rest 20; a new chat
    store.generate(model, [prompts[0] + [other] * 20, [9] * 3], **sp.kwargs())
  monkeypatch.undo()
  real = {k: fn.lower(*args).as_text() for k, (fn, args) in recorded.items()}

  plan = memory_plan.sampling_programs(mc, 5, 16, sp, dtype, param_dtype, remat=remat, kv_cache=True)
  assert plan["generate"].lower().as_text() == real["generate"]
  graphdef, state = memory_plan.sampler_state(mc, dtype, param_dtype, remat)
  chat = chat_cache.core_program(graphdef, state, 2, 4, 20, sp)
  assert chat.shapes == {"batch": 8, "prefill_rows": 8, "kept": 16, "prompt": 32, "new": 16, "cache_slots": 64}
  assert chat.lower().as_text() == real["chat"]
  assert jax.tree.map(lambda x: (x.shape, x.dtype), nnx.split(model)[1]) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), state)


def test_plan_subprocess_tiny(tmp_path):
  out = tmp_path / "plan.json"
  env = subprocess_env(None)  # plan.py forces the mesh's device count itself
  proc = subprocess.run([sys.executable, str(REPO / "launch" / "plan.py"),
                         "--config=" + str(REPO / "configs" / "esconv_llama3_8b.py"), *TINY,
                         "--compile=none", f"--json_out={out}"],
                        capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False).num_params
  m = re.search(r"parameters: ([\d,]+)", proc.stdout)
  assert m and int(m.group(1).replace(",", "")) == expected, proc.stdout
  assert "4 host CPU devices" in proc.stdout and "verdict:" in proc.stdout
  plan_json = json.loads(out.read_text())
  assert plan_json["model"]["num_params"] == expected
  assert plan_json["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "devices": 4}
  assert set(plan_json["lowered"]) == {"train", "train_remat", "generate", "generate_chat_cache"}
  # the sampler as the speakers hold it: fp32 params (config param_dtype) on one device
  assert plan_json["sampling"]["bytes"]["params"] == expected * 4
  assert plan_json["sampling"]["program"]["shapes"]["generate"]["cache_slots"] == 32 + 16
  b = plan_json["train"]["bytes"]
  # fp32 params sharded over fsdp=4 (the few norm weights / indivisible dims are replicated)
  assert expected * 4 / 4 <= b["params"] <= expected * 4
  assert 2 * b["params"] <= b["optimizer_mu_nu"] <= 2 * b["params"] + 64  # + step counters


@pytest.mark.slow
def test_plan_subprocess_compile(tmp_path):
  """--compile=auto on a tiny model: memory_analysis() cross-check present (slower: ~6 compiles)."""
  out = tmp_path / "plan.json"
  tiny = [t for t in TINY if "fsdp" not in t] + ["--config.mesh.fsdp=2", "--config.sft.batch_size=2"]
  proc = subprocess.run([sys.executable, str(REPO / "launch" / "plan.py"),
                         "--config=" + str(REPO / "configs" / "esconv_llama3_8b.py"), *tiny,
                         "--compile=auto", f"--json_out={out}"],
                        capture_output=True, text=True, timeout=600, cwd=str(REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  p = json.loads(out.read_text())
  assert p["train"]["activations_measured_fp32_no_remat"]["total"] > 0
  assert "memory_analysis" in proc.stdout


def test_tpu_vm_dry_run_prints_commands():
  env = dict(os.environ, PROJECT="proj-x", ZONE="us-west4-a", TPU_NAME="t1", WORKDIR="/mnt/disks/run")
  proc = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "--dry-run", "all", "--",
                         "--config.data.path=/data/esconv"], capture_output=True, text=True, timeout=60, env=env)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "gcloud compute tpus tpu-vm create t1 --project=proj-x --zone=us-west4-a" in out
  assert "--accelerator-type=v5litepod-16" in out
  assert "tpu-vm scp" in out and "tpu-vm ssh" in out and out.count("--worker=all") >= 4
  assert "pip\\ install\\ -e\\ ." in out and "launch/pipeline.py" in out and "--workdir=/mnt/disks/run" in out
  assert "--config.data.path=/data/esconv" in out
  bad = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "--dry-run", "explode"],
                       capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "unknown argument" in bad.stderr
