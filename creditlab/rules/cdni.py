"""Conditioned decoupled neural interfaces (Jaderberg et al. 2016): as dni, but every
synthesizer also reads the target (the one-hot label; for losses with output-shaped targets,
the target itself), which lets it predict the error signal far better."""

from __future__ import annotations

from creditlab.rules.dni import DNI


class CDNI(DNI):
    name = "cdni"
    summary = "conditioned dni: synthesizers read the activation and the one-hot label"
    search_space = DNI.search_space  # dni's options, so dni's space
    conditioned = True
