"""Experiments over the pipeline (issue 13): reward horizon, oracle evaluation in the sandbox,
simulator ensembles, baselines (best-of-N, corpus-pair mix, rejection-sampling SFT) and the runner
that tabulates named variants over seeds (`launch/experiment.py`; the oracle is engage_jax/oracle.py).

  baselines.py  best-of-N decoding, corpus pairs, RFT data
  variants.py   the variant registry and the experiment config checks
  runner.py     variants x seeds with shared stages, every agent against every simulator of the
                ensemble (paired: the same conditions and seeds), resume, experiment.json/.md, plot
"""
