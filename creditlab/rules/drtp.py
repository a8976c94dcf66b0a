"""Direct random target projection (Frenkel, Lefebvre and Bol 2021, "Learning without feedback:
fixed random learning signals allow for feedforward training of deep neural networks",
Frontiers in Neuroscience 15:629892; arXiv:1909.01311): hidden layers learn from the target
alone.

Direct feedback alignment (dfa) gives hidden group j the signal dE/dz_j = e B_j, e = delta_o the
output error. DRTP puts the one-hot target y* in e's place:
    delta_j = f_j'(s_j) * (y* B_j),     B_j fixed and random, (n_classes, size_j),
so no error reaches a hidden group at all, not even the output's: each layer's update is known
as soon as its own forward pass is done and the label is there (no update locking, no
feedback path). Why it still learns: for a one-hot target and outputs in [0, 1], e = z_o - y*
has the sign pattern of -y* on the label's unit, so y* B_j is, up to a sign that the random B
absorbs, a sign-only DFA signal concentrated on the label: each hidden group is pushed toward a
fixed random code of its class, which the output layer then reads. The output layer keeps its
exact delta_o (its loss's own gradient), as in the paper. The sign follows the authors' code
(their DRTP hook returns labels @ B where their DFA hook returns (y - labels) @ B).

The signal never shrinks, so it needs units that saturate: with tanh or sigmoid f'(s_j) -> 0
stops a unit once its activity codes the class (Frenkel et al. use tanh). A relu unit has no
such stop: the units the projection pushes up grow without bound, and the run diverged on
digits and MNIST at every rate tried (docs/rules/drtp.md). For those networks the rule offers
the bounded form of the same idea, option signal="target": each hidden group is trained
toward the projected target t_j = y* B_j / sigma_B (entries of standard deviation `scale`),
    delta_j = f_j'(s_j) * (z_j - t_j),
the gradient of the local loss |z_j - t_j|^2 / 2: still no error from above, only the label
and the group's own activity, but the push stops when z_j reaches its target (or, for a
negative target, when a relu unit switches off for that class). signal="auto" (the default)
takes Frenkel et al.'s projection where every hidden group saturates and the target form
otherwise; "projection" forces the paper's rule and refuses non-saturating groups.

B_j are dfa's matrices: the same seeded draw for the same seed, so dfa and drtp differ in the
signal only; in the projection form `scale` is relative to the output group's initial weights'
std, as in dfa. The target y* is the one-hot label for cross-entropy, or the target row
itself for losses given one-hot targets (mse); a network whose output is compared with the
input (an autoencoder) has no class target and is refused. Dense chains only (each group reads
exactly the group before it; one output): other networks are refused naming the group, since
the paper says nothing of groups with several readers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.engine.backward import local_delta, output_deltas, weight_updates
from creditlab.engine.network import Network
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.dfa import DirectFeedbackAlignment
from creditlab.rules.machinery.feedback import distribution_option, scale_option
from creditlab.rules.machinery.space import SearchSpace, optimiser_space

# Hidden activations whose slope f'(s) vanishes as |s| grows, so that the constant signal
# y* B_j stops moving a unit once it saturates (its activity then codes the class).
SATURATING = ("tanh", "sigmoid")
SIGNALS = ("auto", "projection", "target")


class DirectRandomTargetProjection(DirectFeedbackAlignment):
    name = "drtp"
    summary = "direct random target projection: hidden groups learn from y* B_j, no error"
    any_kind = False
    recommended: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.02,
        "momentum": 0.9,
        "output_init": "zero",  # as dfa; the hidden groups never hear the output anyway
    }
    options: ClassVar[dict[str, Option]] = {
        "signal": Option(
            str,
            "auto",
            "projection: delta_j = f'(s_j) (y* B_j) (the paper, saturating units only); "
            "target: delta_j = f'(s_j) (z_j - t_j) toward t_j = y* B_j / std(B); auto: "
            "projection where every hidden group saturates, else target",
            SIGNALS,
        ),
        "scale": scale_option(
            1.0,
            "projection: std of B_j as a multiple of the output group's initial weights' std; "
            "target: std of the targets t_j (> 0)",
        ),
        "distribution": distribution_option(),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "scale": (0.1, 4.0, "log"),
        "signal": ["projection", "target"],
    }

    def signal(self, net: Network) -> str:
        """The form of the hidden signal on this network: "projection" or "target"."""
        if self.opts["signal"] != "auto":
            return self.opts["signal"]
        saturates = all(net.groups[j].act.name in SATURATING for j in net.hidden)
        return "projection" if saturates else "target"

    def check(self, net):
        Rule.check(self, net)  # dense groups, one output
        previous = net.input_name
        for j in net.order[1:]:
            ins = net.groups[j].ins
            if list(ins) != [previous]:
                raise UsageError(
                    f"rule {self.name!r} trains dense chains only (each group reading the one "
                    f"before it); group {j!r} reads {', '.join(ins)}, not just {previous!r}"
                )
            previous = j
        if self.signal(net) == "projection":
            for j in net.hidden:
                act = net.groups[j].act.name
                if act not in SATURATING:
                    raise UsageError(
                        f"rule {self.name!r} with signal=projection needs hidden activations "
                        f"that saturate ({', '.join(SATURATING)}); group {j!r} is {act}, whose "
                        "activity the never-shrinking signal drives without bound. Pass "
                        "--activation tanh, or leave drtp.signal at auto"
                    )
        if net.outputs[0].loss.target == "input":
            raise UsageError(
                f"rule {self.name!r} projects the class target; output {net.output_name!r} is "
                "compared with the input, so there is no target to project"
            )
        super().check(net)  # dfa's: the matrices must fit in memory

    def updates(self, net, x, y):
        trace = net.forward(x, train=True, labels=y)
        self.last_loss = net.total_loss(trace, y)
        deltas = output_deltas(net, trace, y)  # the output layer's own, exact delta_o
        B_all, sizes = self.joined_feedback(net)
        if sizes:
            projected = one_hot(net, y) @ B_all  # y* B_j for every hidden j, one product
            if self.signal(net) == "target":  # targets of std `scale`: B_j's std divided out
                projected.mul_(1.0 / net.init_std(net.output_name))
            for j, p in zip(self._targets(net), projected.split(sizes, dim=1), strict=True):
                signal = p if self.signal(net) == "projection" else trace.z[j] - p
                deltas[j] = local_delta(net, trace, j, signal)
        return weight_updates(net, trace, deltas)

    # An error signal from outside the loss (a GAN) has no class target to project.
    def signal_deltas(self, net, trace, delta_o):
        raise UsageError(self._no_signal_message())

    def signal_at_input(self, net, trace, deltas):
        raise UsageError(self._no_signal_message())

    def check_signal(self, net):
        raise UsageError(self._no_signal_message())


def one_hot(net: Network, y: torch.Tensor) -> torch.Tensor:
    """y* for the batch: one-hot rows from class labels, or the given one-hot rows."""
    if y.dim() == 1:
        return torch.nn.functional.one_hot(y, net.output_size).to(net.dtype)
    return y
