"""Forward-forward (Hinton 2022), supervised: every hidden group learns on its own to tell an
image carrying its true label from the same image carrying a wrong one.

The label is written into the first n_classes input values (over the image's own values, as
Hinton writes it over MNIST's blank border). Positive rows carry the true label, negative rows a
wrong one (`negatives`): by default drawn from the linear readout's softmax over the wrong labels
on the neutral-label pass (Hinton's code; hard negatives at no extra cost), or uniform among the
wrong labels, or the hardest: the wrong label with the most accumulated goodness under the
current network (an all-label pass every step).

Hidden group j has goodness G_j = sum of z_j^2 and a logistic loss that calls a row positive
with probability sigmoid((G_j - theta_j) / T_j), theta_j = threshold * size_j and T_j =
temperature * size_j: both per unit, so that groups of any size share them (Hinton's code has
threshold 1 and T_j = 1, i.e. temperature 1 / size; 0.05 learned faster on MNIST and digits).
`loss=symmetric` pits each positive row against its negative twin instead. The signal
dE_j/dz_j = 2 z_j dE_j/dG_j becomes the update of the weights into j by
creditlab.rules.machinery.local.local_updates. Readers of j receive z_j length-normalised
(Network.forward's
emit) and nothing travels back, so that update depends on j's own loss alone. Peer
normalisation (`peer`) adds Hinton's regulariser; the machinery is in
creditlab/rules/ff_goodness.py.

The network's output group is the linear readout. It learns by the network's own loss, its error
kept to its own weights, on a pass with the neutral label (every label value 1/n_classes), from
what the network feeds it: the normalised activities of the groups it reads (in an mlp, the last
hidden group). Prediction (`readout`):
- goodness (default): every image with every label, all in one batched pass; the label with
  the most goodness summed over the scored groups wins. The scored groups are the hidden groups
  except, with skip_first, those that read nothing but the input (Hinton leaves out the first
  hidden layer, which sees the label values directly), unless that would leave none.
- linear: the readout's scores on the neutral-label pass; one pass instead of n_classes.

The input is RMS-normalised once the label is written (normalise_input), as in Hinton's code.
last_loss is the mean over hidden groups of their forward-forward losses (log 2 at chance).
Metrics: readout_loss (the output group's loss on the neutral pass) and goodness_gap (mean over
hidden groups of (mean G_j on positive rows - on negative rows) / size_j).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.engine.network import Network, Trace
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.ff_goodness import (
    LOSSES,
    PeerNormalisation,
    check_input,
    goodness,
    length_normalise,
    with_every_label,
    with_labels,
    with_neutral_label,
)
from creditlab.rules.machinery.local import local_updates
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace, optimiser_space

Tensor = torch.Tensor
ROWS_PER_PASS = 4096  # bounds the memory of the all-label pass (n_classes rows per image)


def _emit(j: str, z: Tensor) -> Tensor:
    return length_normalise(z)


class ForwardForward(Rule):
    name = "ff"
    summary = "forward-forward: each hidden group tells true-label inputs from wrong-label ones"
    own_readout = True
    # Under SGD at lr 0.05 the goodness of every layer saturates within an epoch.
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 1e-3}
    options = {
        "readout": Option(
            str,
            "goodness",
            "prediction: most goodness over all labels, or the linear readout on the neutral label",
            ("goodness", "linear"),
        ),
        "negatives": Option(
            str,
            "readout",
            "wrong label of negative data: sampled from the readout's softmax over the wrong "
            "labels (Hinton's code), uniform, or hardest (most goodness; an all-label pass)",
            ("readout", "uniform", "hardest"),
        ),
        "loss": Option(
            str,
            "threshold",
            "per-group loss: logistic around the threshold, or "
            "symmetric (positive against negative)",
            tuple(LOSSES),
        ),
        "threshold": Option(float, 1.0, "theta_j = threshold * size_j (mean square activity)"),
        "temperature": Option(float, 0.05, "logits are (G_j - theta_j) / (temperature * size_j)"),
        "label_strength": Option(float, 1.0, "value written for the label's one-hot"),
        "skip_first": Option(
            bool, True, "leave groups reading only the input out of the accumulated goodness"
        ),
        "normalise_input": Option(bool, True, "RMS-normalise the input (label included)"),
        "peer": Option(float, 0.0, "peer normalisation strength (Hinton: 0.03); 0: off"),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "threshold": (0.5, 4.0, "log"),
        "temperature": (0.01, 0.2, "log"),
        "peer": [0.0, 0.03],
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        for key in ("temperature", "label_strength"):
            if not self.opts[key] > 0:
                raise UsageError(f"option ff.{key} must be positive, got {self.opts[key]}")
        if not self.opts["peer"] >= 0:
            raise UsageError(f"option ff.peer must be >= 0, got {self.opts['peer']}")
        self.rng = RuleGenerator(offset=15485863)
        self.peer = PeerNormalisation(self.opts["peer"])

    # ---- forward passes -----------------------------------------------------------------
    def _forward(self, net: Network, x: Tensor, train: bool) -> Trace:
        if self.opts["normalise_input"]:
            x = length_normalise(x)
        return net.forward(x, train=train, emit=_emit)

    def scored_groups(self, net: Network) -> list[str]:
        """The hidden groups whose goodness is summed for prediction."""
        scored = net.hidden
        if self.opts["skip_first"]:
            scored = [j for j in scored if net.groups[j].ins != [net.input_name]] or scored
        return scored

    def goodness_per_label(self, net: Network, x: Tensor) -> Tensor:
        """(N, n_classes): accumulated goodness of every image with every label (no dropout)."""
        check_input(net, self.name)
        C, scored = net.output_size, self.scored_groups(net)
        step = max(1, ROWS_PER_PASS // C)
        parts = []
        for a in range(0, x.shape[0], step):
            xc = x[a : a + step]
            every = with_every_label(xc, C, self.opts["label_strength"])
            trace = self._forward(net, every, train=False)
            total = sum(goodness(trace.z[j]) for j in scored)
            parts.append(total.view(C, xc.shape[0]).t())
        return torch.cat(parts)

    def output(self, net, x):
        """The readout's output on the neutral-label pass (what its loss is measured on)."""
        neutral = with_neutral_label(x, net.output_size, self.opts["label_strength"])
        return self._forward(net, neutral, train=False).z[net.output_name]

    def predict(self, net, x):
        if self.opts["readout"] == "linear":
            return self.output(net, x)
        return self.goodness_per_label(net, x)

    def _negatives(self, net: Network, x: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        """A wrong label per example; logits are the readout's on the neutral pass."""
        C, kind = net.output_size, self.opts["negatives"]
        if kind == "uniform":
            shift = torch.randint(1, C, labels.shape, generator=self.rng.get(net), device=x.device)
            return (labels + shift) % C
        scores = self.goodness_per_label(net, x) if kind == "hardest" else logits.detach()
        scores = scores.scatter(1, labels.unsqueeze(1), float("-inf"))  # never the true label
        if kind == "hardest":
            return scores.argmax(dim=1)
        probs = torch.softmax(scores, dim=1)
        return torch.multinomial(probs, 1, generator=self.rng.get(net)).squeeze(1)

    # ---- the update ---------------------------------------------------------------------
    def _temperature(self, net: Network, j: str) -> float:
        return self.opts["temperature"] * net.groups[j].size

    def updates(self, net, x, y):
        check_input(net, self.name)
        C, N, o = net.output_size, x.shape[0], net.output_name
        strength = self.opts["label_strength"]
        labels = y if y.dim() == 1 else y.argmax(dim=1)  # one-hot targets for mse and bce

        # The readout learns on the neutral-label pass, its error kept to its own weights.
        neutral = self._forward(net, with_neutral_label(x, C, strength), train=True)
        z_o = neutral.z[o]
        readout = local_updates(net, neutral, {o: net.loss_fn.dz(z_o, y)}, partial=True)

        wrong = self._negatives(net, x, labels, z_o)
        both = torch.cat([with_labels(x, labels, C, strength), with_labels(x, wrong, C, strength)])
        trace = self._forward(net, both, train=True)  # rows [0, N) positive, [N, 2N) negative
        loss_fn, dz, losses, gaps = LOSSES[self.opts["loss"]], {}, [], []
        for j in net.hidden:
            z, size = trace.z[j], net.groups[j].size
            theta, temperature = self.opts["threshold"] * size, self._temperature(net, j)
            loss, dz[j] = loss_fn(z, N, theta, temperature)
            G = goodness(z)
            losses.append(loss)
            gaps.append((G[:N].mean() - G[N:].mean()) / size)
        hidden = local_updates(net, trace, dz, partial=True)
        if self.peer.strength > 0:
            for j in net.hidden:
                self.peer.add_to(hidden, net, trace, j, N, 1 / self._temperature(net, j))
        merged = {**hidden, **readout}
        updates = {name: merged[name] for name in net.parameters()}

        self.last_loss = torch.stack(losses).mean().detach()
        self.metrics = {
            "readout_loss": net.loss_fn.mean(z_o, y).detach(),
            "goodness_gap": torch.stack(gaps).mean().detach(),
        }
        return updates

    # ---- state --------------------------------------------------------------------------
    def state_dict(self):
        state = {"peer": self.peer.state_dict()}
        if self.rng.state() is not None:
            state["rng"] = self.rng.state()
        return state

    def load_state_dict(self, state):
        unknown = set(state) - {"peer", "rng"}
        if unknown:
            raise UsageError(
                f"rule 'ff' keeps 'peer' and 'rng' in its state, got {sorted(unknown)}"
            )
        self.rng = RuleGenerator(offset=self.rng.offset)  # a fresh stream unless one is given
        self.rng.load(state.get("rng"))
        self.peer.load_state_dict(state.get("peer", {}))
