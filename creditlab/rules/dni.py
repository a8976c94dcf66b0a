"""Decoupled neural interfaces (Jaderberg et al. 2016): synthetic error signals at block
boundaries, each predicted from the boundary's activation alone.

The network is split into blocks at the boundary groups (default: every hidden group of a dense
network, one boundary at the top of the features of a network with convolutions). A block
updates with the signal its boundary's synthesizer predicts, at once; each synthesizer is trained
toward the signal that arrives from the block above, itself synthetic except at the top
(bootstrapping). The machinery, and what happens across skip connections, is in
creditlab/rules/dni_synthesizers.py. Logged: synth_loss (mean over boundaries) and
synth_loss/GROUP.

Without batch normalisation (which the paper used) a synthetic signal that grows with the
activation it is predicted from can run away when the network takes large steps, so the rule
recommends Adam at a small rate (what was measured: docs/results/rule-notes.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

from creditlab.engine.backward import input_signal, weight_updates
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.dni_synthesizers import (
    SYNTH_KINDS,
    SYNTH_OPTIMIZERS,
    Oracle,
    SyntheticGradients,
    resolve_boundaries,
)
from creditlab.rules.machinery.space import SearchSpace, optimiser_space
from creditlab.rules.machinery.stacking import StackedRule, member_state, stacked_state


class DNI(Rule):
    name = "dni"
    summary = "decoupled neural interfaces: blocks update with learned synthetic error signals"
    not_compiled = (
        "its synthesizers' optimiser counts steps in Python, which would recompile every step"
    )
    # SGD with momentum at lr 0.05 makes the synthetic signals run away (see above).
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 1e-3}
    # On capsnet:small (one boundary, at the primary capsules: default_boundaries) lr 1e-3
    # reached 0.627 test accuracy after 2 epochs of 2,000 MNIST images, 3e-4 0.750. Found by
    # `creditlab tune` (8 trials; best dni-000, lr 2.4e-4, validation accuracy 0.861 with an
    # mlp synthesizer); the search: docs/results/defaults.md.
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {"capsule": {"lr": 3e-4}}
    options: ClassVar[dict[str, Option]] = {
        "boundaries": Option(
            tuple,
            (),
            "comma-separated hidden groups that end a block (default: every hidden group of a "
            "dense network; the top of the features of one with convolutions)",
        ),
        "synth": Option(str, "linear", "synthesizer model", SYNTH_KINDS),
        "hidden": Option(int, 256, "hidden units of the mlp synthesizer"),
        "synth_optimizer": Option(str, "adam", "optimiser of the synthesizers", SYNTH_OPTIMIZERS),
        "synth_lr": Option(float, 3e-3, "learning rate of the synthesizers"),
        "synth_momentum": Option(float, 0.9, "momentum of the sgd synthesizer optimiser"),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "synth": ["linear", "mlp"],
        "synth_lr": (1e-4, 3e-2, "log"),
    }
    conditioned = False  # cdni: the synthesizers also read the target
    any_kind = True

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        o = self.opts
        self.sg = SyntheticGradients(
            self.name,
            o["boundaries"],
            o["synth"],
            o["hidden"],
            o["synth_lr"],
            o["synth_optimizer"],
            o["synth_momentum"],
            conditioned=self.conditioned,
        )

    @property
    def oracle(self) -> Oracle | None:
        """oracle(net, trace, y, b) -> signal to send down from boundary b instead of the
        synthesizer's prediction (the synthesizers are then left untouched)."""
        return self.sg.oracle

    @oracle.setter
    def oracle(self, fn: Oracle | None) -> None:
        self.sg.oracle = fn

    @classmethod
    def stacked_form(cls, rules, nets):
        if rules[0].oracle is not None:  # a test's stand-in signal, not the synthesizers'
            return super().stacked_form(rules, nets)
        return TrainedSynthesizers(rules, nets)

    def check(self, net):
        resolve_boundaries(net, self.opts["boundaries"], self.name)  # before training starts

    def updates(self, net, x, y):
        deltas, trace, metrics = self.sg.step(net, x, y)
        self.last_loss = net.total_loss(trace, y)
        self.metrics = metrics
        return weight_updates(net, trace, deltas)

    def state_dict(self):
        return self.sg.state_dict()

    def load_state_dict(self, state):
        self.sg.load_state_dict(state)

    # ---- a signal from outside the loss (a GAN) ----------------------------------------------
    # The blocks work as in training: the top block receives the outside signal, every block
    # below its boundary's synthetic signal, and each synthesizer takes a step toward the
    # signal that arrived (so a discriminator's synthesizers also learn from the generator's
    # steps). The input is below the lowest block, whose signals travel by bp inside it, so
    # the input receives that block's deltas through W^T.
    @classmethod
    def carries_signals(cls):
        return not cls.conditioned

    def check_signal(self, net):
        if self.conditioned:
            raise UsageError(
                f"rule {self.name!r} conditions its synthesizers on the target, and a signal "
                "from outside the loss (as a GAN sends) has none; use dni"
            )
        super().check_signal(net)

    def signal_deltas(self, net, trace, delta_o):
        self.check_signal(net)
        x = trace.z[net.input_name]
        deltas, _, self.metrics = self.sg.step(net, x, None, trace=trace, delta_o=delta_o)
        return deltas

    def signal_at_input(self, net, trace, deltas):
        return input_signal(net, deltas)


class TrainedSynthesizers(StackedRule):
    """dni and cdni stacked: the synthesizers' parameters (theta) go into the step stacked
    (dim 0), and their gradients come out of it; the synthesizers' optimiser then steps every
    member at once outside vmap, on the stacked theta and optimiser state, as SharedOptimizer
    (speed/stacked_runs.py) does for the networks: its formulas are elementwise, so the
    stack's step is every member's.

    Why not carry the state through the step: inside vmap, Adam's lerp_, addcmul_ and addcdiv_
    have no batching rule and ran member by member, and the whole state went through
    state_dict and load_state_dict (copies of every tensor, and pytree) at every step: the
    stack was 1.5 times slower than the same runs one by one."""

    def __init__(self, rules, nets):
        super().__init__(rules, nets)
        for r, n in zip(rules, nets, strict=True):
            if r.sg.boundaries is None:
                r.sg.setup(n)
        # The template finds its boundaries and synthesizers once, from the first member's
        # state; at every step it reads the batched theta instead of one of its own.
        sg = self.template.sg
        sg.load_state_dict(rules[0].state_dict())
        sg.setup(nets[0])
        sg.theta = sg.opt_state = None
        first = rules[0].sg
        self.opt, self.lr = first.opt, first.lr
        self.state = stacked_state([r.sg.theta for r in rules])  # theta, carried into vmap
        self.opt_state = stacked_state([r.sg.opt_state for r in rules])

    def run(self, net, x, y, extra, theta):
        sg = self.template.sg
        sg.theta, sg.deferred = theta, {}
        try:
            return self.template.updates(net, x, y), sg.deferred
        finally:
            sg.theta, sg.deferred = None, None  # batched values must not outlive vmap

    def carry(self, grads):
        if grads:  # none when there is no boundary
            self.opt.update(self.state, grads, self.opt_state, self.lr)

    def sync(self):
        for k, r in enumerate(self.rules):  # load_state_dict copies: members own their state
            state = {"theta": self.state, "optimizer": self.opt_state}
            r.load_state_dict(member_state(state, k))
