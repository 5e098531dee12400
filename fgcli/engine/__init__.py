"""The method-agnostic training engine: train loop, evaluation, checkpoints, distributed helpers, plots."""
