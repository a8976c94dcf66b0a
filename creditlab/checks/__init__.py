"""Checks of the engine against independent references: `creditlab gradcheck` (gradcheck)
compares the backward sweep with central finite differences and torch.autograd (the oracle,
never used by the engine itself)."""
