"""The parts of ``python -m tfresnet.tune``, one job each.

`run` (one search, resumable), `search` (the keras-tuner search), `lr_range` (the LR
range test), `results` (trials.csv, plots, best_hparams.json), `memory` (many trials in one
process) and `launch` (keras-tuner's distributed mode).
"""
