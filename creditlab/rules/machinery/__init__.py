"""Machinery shared by several rules: feedback matrices, block boundaries and synthesizers,
energies, goodness, inverses, populations, layer-local updates and rule-owned randomness."""
