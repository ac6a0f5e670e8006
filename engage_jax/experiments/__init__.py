"""Experiments over the pipeline (issue 13): reward horizon, oracle evaluation in the sandbox,
simulator ensembles, baselines (best-of-N, corpus-pair mix, rejection-sampling SFT) and the runner
that tabulates named variants over seeds (`launch/experiment.py`).

  oracle.py     the sandbox world as the user: scores from transcripts and live chats
  ensemble.py   every agent against every simulator, paired by condition and seed
  baselines.py  best-of-N decoding, corpus pairs, RFT data
  variants.py   the variant registry and the experiment config checks
  runner.py     variants x seeds with shared stages, resume, experiment.json/.md and the plot
"""
