"""Hyperparameter sweeps: `creditlab tune` (tune), its scheduler (asha), the pool of Ray
workers or the sequential fallback that runs trials and compare runs (ray_backend), and the
tune report (tune_report)."""
