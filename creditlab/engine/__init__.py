"""The engine: groups and their graph (network), the backward sweep, activations and losses."""
