"""The network: a directed acyclic graph of neuron groups.

A dense group j receives s_j = sum over i in ins(j) of z_i W_ij + b_j and emits z_j = f_j(s_j).
W_ij has shape (size of i, size of j), so a batch of activations z_i (N, size_i) multiplies it
from the left. A group may read several groups (merges, skip connections) and feed several
(branches). Other kinds of group (convolution, pooling, capsules, mask; see engine/kinds/) form
s_j their own way from the one group they read; a group's activity has a shape per example (a
vector, an image (C, H, W) or capsules (n, d)) but is stored flat, (N, size), everywhere.
The network validates the graph, owns the parameters and runs the forward pass, recording s and
z for every group; the backward sweep and the learning rules live elsewhere and read that record.
A network may have several output groups, each with a loss and a weight; the total loss is the
weighted sum. The first output is the network's prediction.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from creditlab.engine.activations import Activation
from creditlab.engine.activations import activation as lookup_activation
from creditlab.engine.devices import resolve_device
from creditlab.engine.kinds import KINDS
from creditlab.engine.losses import Loss
from creditlab.engine.losses import loss as lookup_loss
from creditlab.errors import GraphError, UnknownNameError, UsageError

Tensor = torch.Tensor
INITS = ("glorot", "he")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Group:
    """A neuron group: its size, its activation, the groups it reads and how (its kind)."""

    name: str
    size: int
    act: Activation | None = None  # None for the input group
    ins: list[str] = field(default_factory=list)
    init: str = "glorot"
    dropout: float = 0.0  # probability of dropping a unit's output while training
    kind: str = "dense"  # see engine/kinds/
    shape: tuple[int, ...] = ()  # per example; () stands for (size,)
    options: dict = field(default_factory=dict)  # the kind's settings (kernel, stride, ...)

    def __post_init__(self):
        if not self.shape:
            self.shape = (self.size,)

    @property
    def is_input(self) -> bool:
        return self.act is None


@dataclass(frozen=True)
class Output:
    """An output group, the loss on it and the loss's weight in the total."""

    name: str
    loss: Loss
    weight: float = 1.0


@dataclass
class Trace:
    """What a forward pass recorded: s and z per group, and the dropout gains used."""

    s: dict[str, Tensor]
    z: dict[str, Tensor]
    # Dropout, for groups that used it: the gain (mask / keep probability) that multiplied
    # f(s_j) to give z_j, and f(s_j) itself, which the derivative f'(s_j) may need.
    gain: dict[str, Tensor] = field(default_factory=dict)
    undropped: dict[str, Tensor] = field(default_factory=dict)
    # What each group sent to its readers, where a forward pass's `emit` changed it.
    emitted: dict[str, Tensor] = field(default_factory=dict)
    # The labels a training pass was given (a capsule mask keeps the label's capsule), and what
    # kinds keep from their forward pass for their backward one (pooling winners, routing).
    labels: Tensor | None = None
    cache: dict = field(default_factory=dict)
    # A training pass: dropout, and batch norm with the batch's statistics (which also moves
    # the running statistics); evaluation uses the running statistics.
    train: bool = False

    def sent(self, i: str) -> Tensor:
        """The activity group i's readers received: emitted[i] if recorded, else z_i."""
        return self.emitted[i] if i in self.emitted else self.z[i]


def weight_name(i: str, j: str) -> str:
    return f"W[{i}->{j}]"


def bias_name(j: str) -> str:
    return f"b[{j}]"


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    return DTYPES[dtype]


class Network:
    """A DAG of neuron groups with one input group and one output group.

    >>> net = Network(seed=0)
    >>> x = net.input(4)
    >>> h = net.dense(x, 8, activation="tanh")
    >>> y = net.dense([x, h], 3, activation="identity")
    >>> net.output(y, loss="cross_entropy")
    """

    def __init__(
        self,
        dtype: torch.dtype | str = torch.float32,
        device: str = "cpu",
        seed: int = 0,
    ):
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.seed = seed
        self.groups: dict[str, Group] = {}
        self.W: dict[tuple[str, str], Tensor] = {}
        self.b: dict[str, Tensor] = {}
        # State that is not trained: batch norm's running statistics, by name.
        self.buffers: dict[str, Tensor] = {}
        self.input_name: str | None = None
        self.output_name: str | None = None  # the first output, the network's prediction
        self.loss_fn: Loss | None = None  # its loss
        self.outputs: list[Output] = []
        # Initial weights come from CPU generators (see _initialise), so a seed gives the same
        # network on any device; random draws while training (dropout) use one on the device.
        self.rng = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._order: list[str] | None = None
        self._outs: dict[str, list[str]] = {}

    # ---- building -------------------------------------------------------------------------
    def input(self, size: int | Sequence[int], name: str = "input") -> Group:
        """The input group: an int is a vector; a shape (C, H, W) is an image."""
        if self.input_name is not None:
            raise GraphError(f"the network already has an input group {self.input_name!r}")
        shape = _group_shape(size, name)
        group = self._add(Group(name, math.prod(shape), shape=shape))
        self.input_name = name
        return group

    def dense(
        self,
        ins: Group | str | Sequence[Group | str],
        size: int | Sequence[int],
        activation: str = "relu",
        init: str | None = None,
        name: str | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> Group:
        """Add a group reading `ins` (one group or several) with fresh weights and zero bias
        (no bias with bias=False).

        `size` is a number of units, or an image shape (C, H, W) that convolutions can read
        (a generator's latent -> dense (128, 7, 7) -> transposed convolutions); the units are
        the same C * H * W either way."""
        name = name or f"h{sum(not g.is_input for g in self.groups.values()) + 1}"
        act = lookup_activation(activation)
        init = init or act.init
        dropout = _dropout(dropout, name)
        in_names = [self._name_of(g, name) for g in _as_list(ins)]
        if not in_names:
            raise GraphError(f"group {name!r} reads no group")
        if len(set(in_names)) != len(in_names):
            raise GraphError(f"group {name!r} reads the same group twice: {in_names}")
        shape = _group_shape(size, name)
        group = Group(name, math.prod(shape), act, in_names, _init(init, name), dropout)
        group.shape = shape
        if not _flag(bias, "bias", name):
            group.options["bias"] = False
        self._add(group)
        self._initialise(group)
        return group

    def conv(
        self,
        ins: Group | str,
        channels: int,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 0,
        activation: str = "relu",
        init: str | None = None,
        name: str | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> Group:
        """A 2-D convolution of an image group: `channels` kernels of kernel x kernel (one
        bias per channel, none with bias=False)."""
        opts = {"channels": channels, "kernel": kernel, "stride": stride, "padding": padding}
        if not _flag(bias, "bias", name or "conv"):
            opts["bias"] = False
        return self._add_kind("conv", ins, opts, activation, init, name, dropout)

    def conv_transpose(
        self,
        ins: Group | str,
        channels: int,
        kernel: int = 4,
        stride: int = 2,
        padding: int = 1,
        output_padding: int = 0,
        activation: str = "relu",
        init: str | None = None,
        name: str | None = None,
        dropout: float = 0.0,
    ) -> Group:
        """A 2-D transposed convolution of an image group (it upsamples: kernel 4, stride 2,
        padding 1 doubles the height and width); output_padding < stride adds far-edge rows."""
        opts = {
            "channels": channels,
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
            "output_padding": output_padding,
        }
        return self._add_kind("conv_transpose", ins, opts, activation, init, name, dropout)

    def pool(
        self,
        ins: Group | str,
        kernel: int = 2,
        kind: str = "max",
        stride: int | None = None,
        name: str | None = None,
    ) -> Group:
        """Max ("max") or average ("avg") pooling over kernel x kernel windows (stride: kernel)."""
        opts = {"kernel": kernel, "stride": stride, "mode": kind}
        return self._add_kind("pool", ins, opts, "identity", None, name, 0.0)

    def primary_capsules(
        self,
        ins: Group | str,
        types: int,
        dim: int,
        kernel: int = 9,
        stride: int = 2,
        padding: int = 0,
        init: str | None = None,
        name: str | None = None,
    ) -> Group:
        """A convolution with types * dim channels, regrouped into dim-vectors and squashed."""
        opts = {"types": types, "dim": dim, "kernel": kernel, "stride": stride, "padding": padding}
        return self._add_kind("primary_capsules", ins, opts, "squash", init, name, 0.0)

    def capsules(
        self,
        ins: Group | str,
        n: int,
        dim: int,
        routing: int = 3,
        routing_gradient: bool = True,
        init: str | None = None,
        name: str | None = None,
    ) -> Group:
        """n capsules of dim numbers, routed by agreement from the capsules of `ins`.

        routing_gradient=False treats the coupling coefficients as constants on the way back
        (the default differentiates through every routing iteration); see kinds/capsules.py.
        """
        opts = {"n": n, "dim": dim, "routing": routing, "routing_gradient": routing_gradient}
        return self._add_kind("capsules", ins, opts, "squash", init, name, 0.0)

    def batch_norm(
        self,
        ins: Group | str,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        spatial: bool | None = None,
        activation: str = "identity",
        name: str | None = None,
        dropout: float = 0.0,
    ) -> Group:
        """Batch normalisation of the group `ins` (see kinds/batch_norm.py), as torch's: per
        channel of an image (BatchNorm2d) or per unit of a vector (BatchNorm1d); `spatial`
        chooses, by default from the shape of `ins`. momentum=None is a cumulative average."""
        if spatial is None:
            spatial = (
                len(self.groups[self._name_of(_as_list(ins)[0], name or "batch_norm")].shape) == 3
            )
        opts = {"momentum": momentum, "eps": eps, "spatial": spatial}
        return self._add_kind("batch_norm", ins, opts, activation, None, name, dropout)

    def add(
        self,
        ins: Group | str | Sequence[Group | str],
        activation: str = "identity",
        name: str | None = None,
        dropout: float = 0.0,
    ) -> Group:
        """The sum of groups of the same shape through identity connections, no weights (a
        residual block's output: net.add([branch, shortcut], activation="relu")). With one
        group it is an identity connection that gives an activation a group of its own."""
        return self._add_kind("add", ins, {}, activation, None, name, dropout)

    def global_pool(self, ins: Group | str, name: str | None = None) -> Group:
        """The mean of each channel of an image over its positions: (C, H, W) -> (C, 1, 1),
        as torch.nn.AdaptiveAvgPool2d(1)."""
        return self._add_kind("global_pool", ins, {}, "identity", None, name, 0.0)

    def mask(self, ins: Group | str, name: str | None = None) -> Group:
        """Keeps the label's capsule while training, the longest in evaluation; zeroes the rest."""
        return self._add_kind("mask", ins, {}, "identity", None, name, 0.0)

    def _add_kind(
        self,
        kind: str,
        ins: Group | str,
        options: dict,
        activation: str,
        init: str | None,
        name: str | None,
        dropout: float,
    ) -> Group:
        name = name or f"h{sum(not g.is_input for g in self.groups.values()) + 1}"
        act = lookup_activation(activation)
        init = _init(init or act.init, name)
        in_names = [self._name_of(g, name) for g in _as_list(ins)]
        if not KINDS[kind].many_inputs and len(in_names) != 1:
            raise GraphError(f"group {name!r} ({kind}) reads exactly one group, got {in_names}")
        if not in_names:
            raise GraphError(f"group {name!r} reads no group")
        if len(set(in_names)) != len(in_names):
            raise GraphError(f"group {name!r} reads the same group twice: {in_names}")
        options = KINDS[kind].check_options(options, name)  # the kind's schema (engine/kinds/)
        group = Group(name, 1, act, in_names, init, _dropout(dropout, name), kind, (1,), options)
        group.shape = tuple(KINDS[kind].shape(self, group))
        group.size = math.prod(group.shape)
        self._add(group)
        self._initialise(group)
        return group

    def connect(self, src: Group | str, dst: Group | str) -> None:
        """Add the connection W_src,dst to an existing group (this may close a cycle).

        The group's incoming weights are drawn again for the new fan-in.
        """
        j = self._name_of(dst, "connect")
        i = self._name_of(src, j)
        group = self.groups[j]
        if group.is_input:
            raise GraphError(f"the input group {j!r} cannot read other groups")
        if i in group.ins:
            raise GraphError(f"group {j!r} already reads {i!r}")
        if not KINDS[group.kind].many_inputs:
            raise GraphError(f"group {j!r} ({group.kind}) reads exactly one group")
        group.ins.append(i)
        self._initialise(group)
        self._order = None

    def output(self, group: Group | str, loss: str = "cross_entropy", weight: float = 1.0) -> None:
        """Make `group` an output with this loss; the total loss weighs each output's loss.

        The first output is the network's prediction (net.predict, accuracy)."""
        self._add_output(group, loss, weight)
        self.validate()

    def _add_output(self, group: Group | str, loss: str, weight: float) -> None:
        name = self._name_of(group, "output")
        if any(o.name == name for o in self.outputs):
            raise GraphError(f"group {name!r} is already an output")
        g = self.groups[name]
        if g.is_input:
            raise GraphError("the input group cannot be the output")
        loss_fn = lookup_loss(loss)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UsageError(f"the weight of output {name!r} must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise UsageError(f"the weight of output {name!r} must be finite and >= 0, got {weight}")
        is_capsules = len(g.shape) == 2 and g.act.vjp is not None
        if loss_fn.capsules and not is_capsules:
            raise GraphError(
                f"the {loss} loss needs a capsule group (n, d); output group {name!r} has "
                f"shape {g.shape}"
            )
        if loss_fn.classification and (g.shape[0] if is_capsules else g.size) < 2:
            raise GraphError(f"output group {name!r} needs at least 2 units for {loss}")
        if loss_fn.target == "input" and g.size != self.groups[self.input_name].size:
            raise GraphError(
                f"the {loss} loss compares output group {name!r} ({g.size} units) with the "
                f"input ({self.groups[self.input_name].size} units); the sizes must match"
            )
        self.outputs.append(Output(name, loss_fn, float(weight)))
        if self.output_name is None:
            self.output_name, self.loss_fn = name, loss_fn
        self._order = None

    def _add(self, group: Group) -> Group:
        if group.name in self.groups:
            raise GraphError(f"there is already a group named {group.name!r}")
        self.groups[group.name] = group
        self._order = None
        return group

    def _name_of(self, group: Group | str, user: str) -> str:
        name = group.name if isinstance(group, Group) else group
        if not isinstance(name, str) or name not in self.groups:
            raise GraphError(f"group {user!r} refers to {name!r}, which is not in this network")
        return name

    def _initialise(self, group: Group) -> None:
        """Draw W_ij for every i in ins(j), Glorot uniform or He normal over the whole fan-in,
        and a zero bias.

        Each group draws from its own generator, seeded by the network's seed and the group's
        name, so its initial weights do not depend on the order the groups were built in.
        """
        kind = KINDS[group.kind]
        if kind.has_bias(group):
            shape = kind.bias_shape(group)
            self.b[group.name] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.buffers.update(kind.initial_buffers(self, group))
        if not kind.weighted:
            return
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(group.name.encode()))
        j = group.name
        fan_in, fan_out = kind.fans(self, group)
        for i in group.ins:
            shape = kind.weight_shape(self, i, group)
            fixed = kind.initial_weight(self, i, group, shape)
            if fixed is not None:
                self.W[(i, j)] = fixed
                continue
            if group.init == "glorot":
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w = (torch.rand(shape, generator=rng, dtype=torch.float64) * 2 - 1) * bound
            else:
                w = torch.randn(shape, generator=rng, dtype=torch.float64) * self.init_std(j)
            self.W[(i, j)] = w.to(self.device, self.dtype)

    def init_std(self, j: str) -> float:
        """The standard deviation of group j's initial incoming weights, as drawn above:
        Glorot uniform, bound sqrt(6 / (fan_in + size_j)), has std sqrt(2 / (fan_in + size_j));
        He normal has std sqrt(2 / fan_in). Rules that draw feedback matrices match it."""
        group = self.groups[j]
        fan_in, fan_out = KINDS[group.kind].fans(self, group)
        if group.init == "glorot":
            return math.sqrt(2.0 / (fan_in + fan_out))
        return math.sqrt(2.0 / fan_in)

    def kind(self, j: str):
        """The kind of group j (see engine/kinds/)."""
        return KINDS[self.groups[j].kind]

    def feedback_view(self, i: str, j: str) -> Tensor:
        """W_ij as the way back uses it (W_ij^T for dense); a rule's stand-in has its shape."""
        return self.kind(j).feedback_view(self.W[(i, j)])

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Check the graph and return its groups in topological order (input first)."""
        if self._order is not None:
            return self._order
        if self.input_name is None:
            raise GraphError("the network has no input group; call net.input(size)")
        if self.output_name is None:
            raise GraphError("the network has no output group; call net.output(group, loss=...)")
        outs: dict[str, list[str]] = {name: [] for name in self.groups}
        for j, group in self.groups.items():
            for i in group.ins:
                outs[i].append(j)
        # Kahn's algorithm: a group is placed once every group it reads has been placed.
        waiting = {j: len(g.ins) for j, g in self.groups.items()}
        ready = [j for j, n in waiting.items() if n == 0]
        order: list[str] = []
        while ready:
            i = ready.pop(0)
            order.append(i)
            for j in outs[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    ready.append(j)
        if len(order) < len(self.groups):
            stuck = [j for j in self.groups if j not in order]
            raise GraphError(f"the graph has a cycle through group(s): {', '.join(stuck)}")
        sources = [j for j in order if not self.groups[j].ins]
        if sources != [self.input_name]:
            extra = [j for j in sources if j != self.input_name]
            raise GraphError(f"group(s) {', '.join(extra)} read no group")
        output_names = {o.name for o in self.outputs}
        for j in order:
            if not outs[j] and j not in output_names:
                raise GraphError(f"group {j!r} is read by no group and is not the output")
        self._outs, self._order = outs, order
        return order

    def outs(self, name: str) -> list[str]:
        self.validate()
        return self._outs[name]

    @property
    def order(self) -> list[str]:
        return self.validate()

    @property
    def hidden(self) -> list[str]:
        """The groups between input and outputs, in topological order."""
        outputs = {o.name for o in self.outputs}
        return [j for j in self.order if j != self.input_name and j not in outputs]

    @property
    def input_size(self) -> int:
        self.validate()
        return self.groups[self.input_name].size

    @property
    def output_size(self) -> int:
        """The first output group's size (flat)."""
        self.validate()
        return self.groups[self.output_name].size

    @property
    def n_scores(self) -> int:
        """How many scores the prediction gives (classes): the first output's units, or its
        number of capsules for a capsule output."""
        g = self.groups[self.output_name]
        return g.shape[0] if self.loss_fn.capsules else g.size

    # ---- parameters -----------------------------------------------------------------------
    def parameter_slots(self) -> dict[str, tuple[dict, Any]]:
        """Per parameter name, the dict that holds it (self.W or self.b) and its key there.

        The one list of what is a parameter: connections of weightless kinds (pooling, masks)
        and groups of unbiased kinds have none, whatever dicts they appear in."""
        slots: dict[str, tuple[dict, Any]] = {}
        for j in self.order:
            if self.groups[j].is_input:
                continue
            kind = self.kind(j)
            for i in self.groups[j].ins if kind.weighted else ():
                slots[weight_name(i, j)] = (self.W, (i, j))
            if kind.has_bias(self.groups[j]):
                slots[bias_name(j)] = (self.b, j)
        return slots

    def parameters(self) -> dict[str, Tensor]:
        """Every parameter by name, as the live tensors: editing one edits the network."""
        return {name: holder[key] for name, (holder, key) in self.parameter_slots().items()}

    def state(self) -> dict[str, Tensor]:
        """The parameters and the buffers (batch norm's running statistics), live."""
        return {**self.parameters(), **self.buffers}

    def load_parameters(self, values: dict[str, Tensor]) -> None:
        """Copy values into the parameters and buffers, checking names and shapes (the
        buffers of batch norm's running statistics as copy_parameters gives them)."""
        params = self.state()
        missing, unknown = set(params) - set(values), set(values) - set(params)
        if missing or unknown:
            raise UsageError(
                f"parameters do not match the network: missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}"
            )
        for name, p in params.items():
            if tuple(values[name].shape) != tuple(p.shape):
                raise UsageError(
                    f"parameter {name} has shape {tuple(p.shape)} in the network "
                    f"but {tuple(values[name].shape)} in the values given"
                )
        for name, p in params.items():
            p.copy_(values[name])

    def copy_parameters(self) -> dict[str, Tensor]:
        """A copy of the parameters, and of the buffers (running statistics) where there are
        any: what a checkpoint or the best epoch keeps."""
        return {name: p.clone() for name, p in self.state().items()}

    def spec(self) -> dict:
        """The architecture as plain data (for configs and checkpoints); see from_spec."""
        self.validate()
        groups = []
        for g in self.groups.values():
            entry = {
                "name": g.name,
                "size": g.size,
                "activation": None if g.is_input else g.act.name,
                "ins": list(g.ins),
                "init": g.init,
                "dropout": g.dropout,
            }
            if g.kind != "dense" or g.options:  # dense groups keep their spec (bias aside)
                entry.update(kind=g.kind, options=dict(g.options))
            if g.kind == "dense" and len(g.shape) > 1:  # an image-shaped input or dense group
                entry["shape"] = list(g.shape)
            groups.append(entry)
        spec = {"groups": groups, "output": self.output_name, "loss": self.loss_fn.name}
        if len(self.outputs) > 1 or self.outputs[0].weight != 1.0:
            spec["outputs"] = [
                {"group": o.name, "loss": o.loss.name, "weight": o.weight} for o in self.outputs
            ]
        return spec

    @classmethod
    def from_spec(
        cls,
        spec: dict,
        dtype: torch.dtype | str = torch.float32,
        device="cpu",
        seed: int = 0,
    ) -> Network:
        """Build a network from plain data; groups may be listed in any order."""
        net = cls(dtype=dtype, device=device, seed=seed)
        try:
            groups, output, loss = (
                spec["groups"],
                spec["output"],
                spec.get("loss", "cross_entropy"),
            )
            entries = [dict(g) for g in groups]
            inputs = [g for g in entries if not g.get("ins")]
            if len(inputs) != 1:
                names = [g.get("name") for g in inputs]
                raise GraphError(f"a network needs exactly one group without ins, got {names}")
            net.input(inputs[0].get("shape") or inputs[0]["size"], name=inputs[0]["name"])
            rest = [g for g in entries if g.get("ins")]
            for g in rest:  # create every group first so that ins may name later groups
                act = lookup_activation(g.get("activation", "relu"))
                size = _positive_size(g["size"], g["name"])
                kind = g.get("kind", "dense")
                if kind not in KINDS:
                    raise UnknownNameError("group kind", kind, KINDS)
                init = _init(g.get("init") or act.init, g["name"])
                group = Group(
                    g["name"], size, act, [], init, kind=kind, options=g.get("options", {})
                )
                if kind == "dense" and g.get("shape"):
                    group.shape = _group_shape(tuple(g["shape"]), g["name"])
                    if math.prod(group.shape) != size:
                        raise GraphError(
                            f"group {g['name']!r} has size {size} but shape {group.shape}"
                        )
                net._add(group)
            for g in rest:
                group = net.groups[g["name"]]
                group.ins = [net._name_of(i, group.name) for i in g["ins"]]
                group.dropout = _dropout(g.get("dropout", 0.0), group.name)
            net._shape_groups([net.groups[g["name"]] for g in rest])
            for g in rest:
                net._initialise(net.groups[g["name"]])
        except (KeyError, TypeError) as err:
            raise GraphError(f"malformed network spec: missing or bad field {err}") from None
        outputs = spec.get("outputs") or [{"group": output, "loss": loss, "weight": 1.0}]
        try:
            for o in outputs:
                net._add_output(o["group"], o["loss"], o.get("weight", 1.0))
        except (KeyError, TypeError) as err:
            raise GraphError(f"malformed network spec: bad outputs entry {err}") from None
        net.validate()
        return net

    def _shape_groups(self, groups: list[Group]) -> None:
        """Work out the shapes of non-dense groups built from a spec, readers after the groups
        they read (their shapes follow from their inputs')."""
        pending = [g for g in groups if g.kind != "dense"]
        while pending:
            done = {g.name for g in pending}
            ready = [g for g in pending if not (set(g.ins) & done)]
            if not ready:
                raise GraphError(f"the graph has a cycle through group(s): {sorted(done)}")
            for g in ready:
                if len(g.ins) != 1 and not KINDS[g.kind].many_inputs:
                    raise GraphError(f"group {g.name!r} ({g.kind}) reads exactly one group")
                g.shape = tuple(KINDS[g.kind].shape(self, g))
                g.size = math.prod(g.shape)
            pending = [g for g in pending if g not in ready]

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        train: bool = False,
        emit: Callable[[str, Tensor], Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> Trace:
        """Run the network on a batch, recording s and z for every group.

        `x` is (N, size of the input) or, for an image input, (N, C, H, W). `labels`, when
        given, are what capsule masks keep (the label's capsule; without them, the longest).
        `train` applies dropout. `emit(j, z_j)`, when given, is what the groups reading hidden
        group j receive in place of z_j (forward-forward passes length-normalised activities
        upward); it is recorded in trace.emitted, and the backward sweep does not
        differentiate through it.
        """
        order = self.validate()
        x = self._check_input(x)
        s: dict[str, Tensor] = {}
        z: dict[str, Tensor] = {self.input_name: x}
        trace = Trace(s, z, labels=labels, train=train)
        sent = z if emit is None else trace.emitted  # what each group's readers receive
        sent[self.input_name] = x
        for j in order[1:]:
            group = self.groups[j]
            s_j = KINDS[group.kind].forward(self, group, trace, [sent[i] for i in group.ins])
            s[j] = s_j
            if group.act.vjp is None:
                z[j] = group.act.f(s_j)
            else:  # an activation over each capsule's vector
                z[j] = group.act.f(s_j.view(-1, *group.shape)).reshape(s_j.shape)
            if train and group.dropout > 0:
                keep = 1.0 - group.dropout
                mask = torch.rand(s_j.shape, generator=self.rng, device=self.device) < keep
                trace.gain[j] = mask.to(self.dtype) / keep  # inverted dropout
                trace.undropped[j] = z[j]
                z[j] = z[j] * trace.gain[j]
            if emit is not None:
                sent[j] = z[j] if j == self.output_name else emit(j, z[j])
        return trace

    def _check_input(self, x: Tensor) -> Tensor:
        """The batch, flat (N, size), after checking its shape, dtype and device."""
        group = self.groups[self.input_name]
        size, shape = group.size, group.shape
        flat_ok = x.dim() == 2 and x.shape[1] == size
        shaped_ok = len(shape) > 1 and tuple(x.shape[1:]) == shape
        if not (flat_ok or shaped_ok):
            as_image = f" or (N, {', '.join(map(str, shape))})" if len(shape) > 1 else ""
            raise UsageError(
                f"input group {self.input_name!r} has {size} units but the batch has shape "
                f"{tuple(x.shape)}; give (N, {size}){as_image}"
            )
        if x.dtype != self.dtype or x.device != self.device:
            raise UsageError(
                f"batch is {x.dtype} on {x.device}, network is {self.dtype} on {self.device}"
            )
        return x if flat_ok else x.reshape(x.shape[0], size)

    def shaped(self, j: str, value: Tensor) -> Tensor:
        """A flat (N, size_j) activity or signal of group j in the group's shape per example
        (unchanged for vectors)."""
        shape = self.groups[j].shape
        return value if len(shape) == 1 else value.view(value.shape[0], *shape)

    def target(self, output: Output, trace: Trace, y: Tensor) -> Tensor:
        """What an output's loss compares it with: the labels, or the input (reconstruction)."""
        return trace.z[self.input_name] if output.loss.target == "input" else y

    def total_loss(self, trace: Trace, y: Tensor) -> Tensor:
        """The weighted sum over the outputs of each one's mean loss on the batch."""
        total = None
        for o in self.outputs:
            term = o.loss.mean(self.shaped(o.name, trace.z[o.name]), self.target(o, trace, y))
            term = term if o.weight == 1.0 else term * o.weight
            total = term if total is None else total + term
        return total

    def predict(self, x: Tensor) -> Tensor:
        """The first output group's activations z_o for a batch (evaluation mode: no dropout),
        in the group's shape (N, n, d) for capsules."""
        return self.shaped(self.output_name, self.forward(x).z[self.output_name])

    def loss(self, x: Tensor, y: Tensor) -> float:
        """The total loss: over the outputs, weighted, of the mean per-example loss. Capsule
        masks keep the label's capsule, as while training."""
        return float(self.total_loss(self.forward(x, labels=y), y))

    def __repr__(self) -> str:
        lines = [f"Network({self.dtype}, {self.device}, seed={self.seed})"]
        outputs = {o.name for o in self.outputs}
        for g in self.groups.values():
            what = "input" if g.is_input else f"{g.act.name} <- {', '.join(g.ins)}"
            if g.kind != "dense":
                what = f"{g.kind} {what}"
            size = g.size if len(g.shape) == 1 else "x".join(map(str, g.shape))
            tag = " [output]" if g.name in outputs else ""
            lines.append(f"  {g.name}: {size} {what}{tag}")
        return "\n".join(lines)


def _as_list(ins: Group | str | Iterable[Group | str]) -> list[Group | str]:
    if isinstance(ins, (Group, str)):
        return [ins]
    return list(ins)


def _positive_size(size: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GraphError(f"group {name!r} needs a positive integer size, got {size!r}")
    return size


def _group_shape(size: int | Sequence[int], name: str) -> tuple[int, ...]:
    """A dense group's shape per example: (n,) for a size n, or an image (C, H, W)."""
    if not isinstance(size, (tuple, list)):
        return (_positive_size(size, name),)
    shape = tuple(_positive_size(n, name) for n in size)
    if len(shape) not in (1, 3):
        raise GraphError(f"group {name!r} needs a size n or a shape (C, H, W), got {size}")
    return shape


def _dropout(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise UsageError(f"dropout of group {name!r} must be a number in [0, 1), got {p!r}")
    return float(p)


def _init(init: str, name: str) -> str:
    if init not in INITS:
        raise UsageError(f"unknown init {init!r} for group {name!r}; valid inits: glorot, he")
    return init


def _flag(value: bool, what: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} of group {name!r} must be True or False, got {value!r}")
    return value
