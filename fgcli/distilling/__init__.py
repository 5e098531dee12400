"""`fgcli distill`: a baseline student trained on a frozen teacher's fused, calibrated probabilities plus the labels.

`loss` (the temperature-softened KL + CE), `teacher` (a checkpoint on torch or an exported file on its format's runtime,
fed the student's batch in its own preprocessing), `task` (the training step's loss the engine calls), `run`
(config, resume, the run). Importing the package is light (no torch).
"""
