"""Experiments built on the engine and the rules: the training loop, checkpoints, comparisons,
reports, alignment diagnostics, model strings and gradient checks."""
