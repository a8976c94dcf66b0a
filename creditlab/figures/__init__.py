"""Pictures drawn from trained runs: a capsule network's perturbed capsules (capsules)."""
