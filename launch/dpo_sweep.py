"""Choose DPO's learning rate, beta and epochs on held-out search trees (never on test chats).

  python launch/dpo_sweep.py --config=configs/sandbox_p4g.py --workdir=DIR \
      --learning_rates=5e-4,2e-3 --betas=0.1,0.3 --num_epochs=4 --heldout_fraction=0.1

Needs a workdir whose search is done (its stages run first if not). Trains the SFT agent on the
pairs of the unheld trees for every (learning rate, beta) into DIR/dpo_sweep/ (the pipeline's dpo
stage is left alone), writes DIR/dpo_sweep/sweep.json and sweep.png (held-out pair accuracy and
implicit margin per epoch; engage_jax/train/dpo_sweep.py) and prints the chosen settings as
--config overrides.
"""
import _common
from absl import flags

from engage_jax import build, pipeline
from engage_jax.train import dpo_sweep

_LRS = flags.DEFINE_list("learning_rates", ["5e-4", "2e-3"], "Learning rates to try.")
_BETAS = flags.DEFINE_list("betas", ["0.1"], "DPO betas to try.")
_EPOCHS = flags.DEFINE_integer("num_epochs", 4, "Epochs of every run (the curve gives the best epoch).")
_HELDOUT = flags.DEFINE_float("heldout_fraction", 0.1, "Share of the search trees held out.")


def main():
  cfg, wd_dir = _common.config(), _common.workdir()
  wd = pipeline.run(cfg, wd_dir, pipeline.with_dependencies(("search",)))
  tok = build.load_tokenizer(wd)
  files = [str(f) for f in pipeline.pair_files(wd) if f.read_bytes().strip()]
  if not files:
    raise ValueError(f"{wd.path('pairs')}: the search found no preference pairs; nothing to sweep")
  sft = wd.path("sft_agent", "hf")
  policy = lambda: build.with_lora(cfg, "agent", build.load_model(cfg, sft), fresh=True)
  ref = None if cfg.model.agent.lora.rank > 0 else build.load_model(cfg, sft)   # LoRA: adapter-off reference
  out = dpo_sweep.sweep(policy, ref, files, tok, build.train_config(cfg, cfg.dpo), workdir=str(wd.path("dpo_sweep")),
                        learning_rates=[float(x) for x in _LRS.value], betas=[float(x) for x in _BETAS.value],
                        num_epochs=_EPOCHS.value, heldout_fraction=_HELDOUT.value, mesh=build.make_mesh(cfg))
  b = out["best"]
  print(f"[engage_jax] held-out choice ({wd.path('dpo_sweep', 'sweep.json')}): accuracy {b['accuracy']:.3f}, "
        f"margin {b['margin']:.3f}; use --config.dpo.learning_rate={b['learning_rate']:g} "
        f"--config.dpo.beta={b['beta']:g} --config.dpo.num_epochs={b['num_epochs']} --config.dpo.steps=0", flush=True)


if __name__ == "__main__":
  _common.run(main)
