"""GANs on the engine: the two-network loop (loop), its losses, the classifier judge and its
Frechet distance (scoring, fid), the run folder's pictures and page (pictures), rule pairs
compared over seeds (compare), and the command line (cli)."""
