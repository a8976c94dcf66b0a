"""Machinery shared by several rules: feedback matrices (feedback), error signals carried from
outside the loss (signals), how a rule's step runs in a stack (stacking), populations of
perturbed networks (population), layer-local updates (local), rule-owned randomness
(randomness) and search spaces (space). Code that serves one rule sits beside that rule
(rules/dni_synthesizers.py, pc_energy.py, ff_goodness.py, dtp_inverses.py)."""
