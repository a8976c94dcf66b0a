"""The fast paths, each equal to the plain step it replaces: the compiled step (compiled), CUDA
graphs captured by hand (cuda_graphs), a stack of networks as one vmapped computation
(vmap_stack) and the loop that trains such a stack as K runs (stacked_runs)."""
