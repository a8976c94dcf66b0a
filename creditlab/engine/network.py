"""The network: a directed acyclic graph of neuron groups.

Group j receives s_j = sum over i in ins(j) of z_i W_ij + b_j and emits z_j = f_j(s_j). W_ij has
shape (size of i, size of j), so a batch of activations z_i (N, size_i) multiplies it from the
left. A group may read several groups (merges, skip connections) and feed several (branches).
The network validates the graph, owns the parameters and runs the forward pass, recording s and
z for every group; the backward sweep and the learning rules live elsewhere and read that record.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from creditlab.engine.activations import Activation
from creditlab.engine.activations import activation as lookup_activation
from creditlab.engine.devices import resolve_device
from creditlab.engine.losses import Loss
from creditlab.engine.losses import loss as lookup_loss
from creditlab.errors import GraphError, UsageError

Tensor = torch.Tensor
INITS = ("glorot", "he")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Group:
    """A neuron group: its size, its activation and the groups it reads."""

    name: str
    size: int
    act: Activation | None = None  # None for the input group
    ins: list[str] = field(default_factory=list)
    init: str = "glorot"
    dropout: float = 0.0  # probability of dropping a unit's output while training

    @property
    def is_input(self) -> bool:
        return self.act is None


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
        self.input_name: str | None = None
        self.output_name: str | None = None
        self.loss_fn: Loss | None = None
        # Initial weights come from CPU generators (see _initialise), so a seed gives the same
        # network on any device; random draws while training (dropout) use one on the device.
        self.rng = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._order: list[str] | None = None
        self._outs: dict[str, list[str]] = {}

    # ---- building -------------------------------------------------------------------------
    def input(self, size: int, name: str = "input") -> Group:
        if self.input_name is not None:
            raise GraphError(f"the network already has an input group {self.input_name!r}")
        group = self._add(Group(name, _positive_size(size, name)))
        self.input_name = name
        return group

    def dense(
        self,
        ins: Group | str | Sequence[Group | str],
        size: int,
        activation: str = "relu",
        init: str | None = None,
        name: str | None = None,
        dropout: float = 0.0,
    ) -> Group:
        """Add a group reading `ins` (one group or several) with fresh weights and zero bias."""
        name = name or f"h{sum(not g.is_input for g in self.groups.values()) + 1}"
        act = lookup_activation(activation)
        init = init or act.init
        dropout = _dropout(dropout, name)
        in_names = [self._name_of(g, name) for g in _as_list(ins)]
        if not in_names:
            raise GraphError(f"group {name!r} reads no group")
        if len(set(in_names)) != len(in_names):
            raise GraphError(f"group {name!r} reads the same group twice: {in_names}")
        group = Group(name, _positive_size(size, name), act, in_names, _init(init, name), dropout)
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
        group.ins.append(i)
        self._initialise(group)
        self._order = None

    def output(self, group: Group | str, loss: str = "cross_entropy") -> None:
        name = self._name_of(group, "output")
        if self.output_name is not None:
            raise GraphError(f"the network already has an output group {self.output_name!r}")
        if self.groups[name].is_input:
            raise GraphError("the input group cannot be the output")
        self.loss_fn = lookup_loss(loss)
        if self.loss_fn.classification and self.groups[name].size < 2:
            raise GraphError(f"output group {name!r} needs at least 2 units for {loss}")
        self.output_name = name
        self.validate()

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
        self.b[group.name] = torch.zeros(group.size, dtype=self.dtype, device=self.device)
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(group.name.encode()))
        j = group.name
        fan_in = sum(self.groups[i].size for i in group.ins)
        for i in group.ins:
            shape = (self.groups[i].size, group.size)
            if group.init == "glorot":
                bound = math.sqrt(6.0 / (fan_in + group.size))
                w = (torch.rand(shape, generator=rng, dtype=torch.float64) * 2 - 1) * bound
            else:
                w = torch.randn(shape, generator=rng, dtype=torch.float64) * self.init_std(j)
            self.W[(i, j)] = w.to(self.device, self.dtype)

    def init_std(self, j: str) -> float:
        """The standard deviation of group j's initial incoming weights, as drawn above:
        Glorot uniform, bound sqrt(6 / (fan_in + size_j)), has std sqrt(2 / (fan_in + size_j));
        He normal has std sqrt(2 / fan_in). Rules that draw feedback matrices match it."""
        group = self.groups[j]
        fan_in = sum(self.groups[i].size for i in group.ins)
        if group.init == "glorot":
            return math.sqrt(2.0 / (fan_in + group.size))
        return math.sqrt(2.0 / fan_in)

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
        for j in order:
            if not outs[j] and j != self.output_name:
                raise GraphError(f"group {j!r} is read by no group and is not the output")
        if outs[self.output_name]:
            raise GraphError(f"the output group {self.output_name!r} must not feed other groups")
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
        """The groups between input and output, in topological order."""
        return [j for j in self.order if j not in (self.input_name, self.output_name)]

    @property
    def input_size(self) -> int:
        self.validate()
        return self.groups[self.input_name].size

    @property
    def output_size(self) -> int:
        self.validate()
        return self.groups[self.output_name].size

    # ---- parameters -----------------------------------------------------------------------
    def parameters(self) -> dict[str, Tensor]:
        """Every parameter by name, as the live tensors: editing one edits the network."""
        params: dict[str, Tensor] = {}
        for j in self.order:
            for i in self.groups[j].ins:
                params[weight_name(i, j)] = self.W[(i, j)]
            if not self.groups[j].is_input:
                params[bias_name(j)] = self.b[j]
        return params

    def load_parameters(self, values: dict[str, Tensor]) -> None:
        """Copy values into the parameters, checking names and shapes."""
        params = self.parameters()
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
        return {name: p.clone() for name, p in self.parameters().items()}

    def spec(self) -> dict:
        """The architecture as plain data (for configs and checkpoints); see from_spec."""
        self.validate()
        return {
            "groups": [
                {
                    "name": g.name,
                    "size": g.size,
                    "activation": None if g.is_input else g.act.name,
                    "ins": list(g.ins),
                    "init": g.init,
                    "dropout": g.dropout,
                }
                for g in self.groups.values()
            ],
            "output": self.output_name,
            "loss": self.loss_fn.name,
        }

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
            net.input(inputs[0]["size"], name=inputs[0]["name"])
            rest = [g for g in entries if g.get("ins")]
            for g in rest:  # create every group first so that ins may name later groups
                act = lookup_activation(g.get("activation", "relu"))
                size = _positive_size(g["size"], g["name"])
                net._add(
                    Group(g["name"], size, act, [], _init(g.get("init") or act.init, g["name"]))
                )
            for g in rest:
                group = net.groups[g["name"]]
                group.ins = [net._name_of(i, group.name) for i in g["ins"]]
                group.dropout = _dropout(g.get("dropout", 0.0), group.name)
                net._initialise(group)
        except (KeyError, TypeError) as err:
            raise GraphError(f"malformed network spec: missing or bad field {err}") from None
        net.output(output, loss=loss)
        return net

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        train: bool = False,
        emit: Callable[[str, Tensor], Tensor] | None = None,
    ) -> Trace:
        """Run the network on a batch, recording s and z for every group.

        `train` applies dropout. `emit(j, z_j)`, when given, is what the groups reading hidden
        group j receive in place of z_j (forward-forward passes length-normalised activities
        upward); it is recorded in trace.emitted, and the backward sweep does not
        differentiate through it.
        """
        order = self.validate()
        self._check_input(x)
        s: dict[str, Tensor] = {}
        z: dict[str, Tensor] = {self.input_name: x}
        trace = Trace(s, z)
        sent = z if emit is None else trace.emitted  # what each group's readers receive
        sent[self.input_name] = x
        for j in order[1:]:
            group = self.groups[j]
            first, *rest = group.ins
            s_j = torch.addmm(self.b[j], sent[first], self.W[(first, j)])
            for i in rest:
                s_j.addmm_(sent[i], self.W[(i, j)])
            s[j] = s_j
            z[j] = group.act.f(s_j)
            if train and group.dropout > 0:
                keep = 1.0 - group.dropout
                mask = torch.rand(s_j.shape, generator=self.rng, device=self.device) < keep
                trace.gain[j] = mask.to(self.dtype) / keep  # inverted dropout
                trace.undropped[j] = z[j]
                z[j] = z[j] * trace.gain[j]
            if emit is not None:
                sent[j] = z[j] if j == self.output_name else emit(j, z[j])
        return trace

    def _check_input(self, x: Tensor) -> None:
        size = self.groups[self.input_name].size
        if x.dim() != 2 or x.shape[1] != size:
            raise UsageError(
                f"input group {self.input_name!r} has {size} units but the batch has shape "
                f"{tuple(x.shape)}"
            )
        if x.dtype != self.dtype or x.device != self.device:
            raise UsageError(
                f"batch is {x.dtype} on {x.device}, network is {self.dtype} on {self.device}"
            )

    def predict(self, x: Tensor) -> Tensor:
        """The output group's activations z_o for a batch (evaluation mode: no dropout)."""
        return self.forward(x).z[self.output_name]

    def loss(self, x: Tensor, y: Tensor) -> float:
        """Mean over the batch of the per-example loss."""
        return float(self.loss_fn.mean(self.predict(x), y))

    def __repr__(self) -> str:
        lines = [f"Network({self.dtype}, {self.device}, seed={self.seed})"]
        for g in self.groups.values():
            what = "input" if g.is_input else f"{g.act.name} <- {', '.join(g.ins)}"
            tag = " [output]" if g.name == self.output_name else ""
            lines.append(f"  {g.name}: {g.size} {what}{tag}")
        return "\n".join(lines)


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    loss: str = "cross_entropy",
    output_activation: str = "identity",
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    dropout: float = 0.0,
    init: str | None = None,
) -> Network:
    """A plain stack: input sizes[0], hidden groups h1..hn, output group 'out' of sizes[-1]."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise UsageError(f"an mlp needs at least an input and an output size, got {sizes}")
    net = Network(dtype=dtype, device=device, seed=seed)
    group = net.input(sizes[0])
    for size in sizes[1:-1]:
        group = net.dense(group, size, activation=activation, init=init, dropout=dropout)
    out = net.dense(group, sizes[-1], activation=output_activation, name="out")
    net.output(out, loss=loss)
    return net


def _as_list(ins: Group | str | Iterable[Group | str]) -> list[Group | str]:
    if isinstance(ins, (Group, str)):
        return [ins]
    return list(ins)


def _positive_size(size: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GraphError(f"group {name!r} needs a positive integer size, got {size!r}")
    return size


def _dropout(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise UsageError(f"dropout of group {name!r} must be a number in [0, 1), got {p!r}")
    return float(p)


def _init(init: str, name: str) -> str:
    if init not in INITS:
        raise UsageError(f"unknown init {init!r} for group {name!r}; valid inits: glorot, he")
    return init
