"""Training one network: its configuration (config) and resolved settings (settings), the one
epoch loop every trainer plugs its step into (loop), the single-run trainer (trainer),
checkpoints, the guards that stop runs that learn nothing (guards), run folders (folders),
alignment diagnostics (diagnostics) and the output layer's start (output_init)."""
