"""`creditlab tune`: the search over a rule's space (search), its scheduler (asha), the pool of
Ray workers or the sequential fallback that runs trials and compare runs (ray_backend), and the
tune report (report)."""
