"""How the output layer's weights start: as drawn with the network ("random"), or at zero.

Feedback alignment needs the forward weights above a hidden group to start small, so that they
grow into alignment with the fixed feedback B (Lillicrap et al. 2016). From the default random
start the output layer's weights are unrelated to B, and the hidden groups, driven by e B,
move in directions that do not lower the loss: on relu LeNet fa and dfa barely learnt from
there (the README's convolution results). With the output layer's weights at zero, the hidden
groups learn from e B alone at first and the output layer grows into alignment with it.

Only the weights into the prediction group (the network's first output) are zeroed, and only
when that group is dense; its bias stays (zero as drawn). The feedback matrices of fa and dfa
are drawn with the standard deviation of the group's *initial distribution* (Network.init_std),
not of its weights, so zeroing the weights leaves them as they are. A capsule output is left
alone: routed capsules with zero weights predict zero vectors, whose squash passes no gradient,
so they would never learn.
"""

from __future__ import annotations

from creditlab.engine.network import Network
from creditlab.errors import UnknownNameError, UsageError

OUTPUT_INITS = ("random", "zero")


def check_output_init(how: str) -> None:
    if how not in OUTPUT_INITS:
        raise UnknownNameError("output init", how, OUTPUT_INITS)


def zero_applies(net: Network) -> str | None:
    """None when the prediction group's weights can start at zero, else why not (one line)."""
    kind = net.kind(net.output_name).name
    if kind != "dense":
        return (
            f"output init 'zero' needs a dense output group; {net.output_name!r} is {kind} "
            "(capsules with zero weights predict zero vectors and never learn)"
        )
    return None


def apply_output_init(net: Network, how: str) -> None:
    """Set the weights into the prediction group as `how` says ("random": leave them)."""
    check_output_init(how)
    if how == "random":
        return
    problem = zero_applies(net)
    if problem:
        raise UsageError(problem)
    j = net.output_name
    for i in net.groups[j].ins:
        net.W[(i, j)].zero_()
