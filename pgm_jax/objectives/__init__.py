"""Training objectives: what a model is scored on, given a batch and a key.

schedule: the text noise schedule, times, partitions / masking, logit post-processing and
  per-token loss terms; text: the PGM / MDLM / complement-MDLM / AR losses; image: the arccos
  schedule and the image PGM / MaskGIT losses; losses: the table of losses by `config.algo`.
Objectives import models (for the training heads); models never import objectives.
"""
