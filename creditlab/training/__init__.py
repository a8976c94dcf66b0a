"""Training one network: its configuration and resolved settings (settings), the trainer and
its epoch loop (trainer), checkpoints, the guards that stop runs that learn nothing (guards),
run folders (folders), alignment diagnostics (diagnostics) and the output layer's start
(output_init)."""
